// Package galleytest holds helpers shared by galley's table tests: building
// documents from short spec bodies and reading the expected findings that
// test inputs mark inline.
//
// A case marks the line a finding must point at with a comment:
//
//	weight: -10   #! GAL2009
//
// "#! A B" expects codes A and B on that line; "#!-N A" expects A N lines
// above, which reaches header lines such as "spec:" that a case body cannot
// annotate. Inputs without markers expect no findings at all.
package galleytest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/meshd/meshd/modules/galley/api"
)

// Doc builds a document of kind in namespace "ns" named name, with body
// (unindented) as its spec. The header is four lines, so "spec:" is line 4
// and the body starts on line 5.
func Doc(apiVersion, kind, name, body string) string {
	return DocMeta(apiVersion, kind, "{name: "+name+", namespace: ns}", body)
}

// DocMeta is Doc with a custom flow-style metadata mapping.
func DocMeta(apiVersion, kind, meta, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: %s\nkind: %s\nmetadata: %s\nspec:", apiVersion, kind, meta)
	body = strings.Trim(body, "\n")
	if strings.TrimSpace(body) == "" {
		b.WriteString(" {}\n")
		return b.String()
	}
	b.WriteByte('\n')
	for _, l := range strings.Split(body, "\n") {
		if l != "" {
			b.WriteString("  ")
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// Expected reads the "#!" markers of src as sorted "CODE@line" strings.
func Expected(src string) []string {
	var out []string
	for i, l := range strings.Split(src, "\n") {
		_, m, ok := strings.Cut(l, "#!")
		if !ok {
			continue
		}
		line := i + 1
		if strings.HasPrefix(m, "-") {
			end := strings.IndexByte(m, ' ')
			if end < 0 {
				end = len(m)
			}
			n, err := strconv.Atoi(m[1:end])
			if err == nil {
				line -= n
				m = m[end:]
			}
		}
		for _, code := range strings.Fields(m) {
			out = append(out, code+"@"+strconv.Itoa(line))
		}
	}
	slices.Sort(out)
	return out
}

// Got renders findings as sorted "CODE@line" strings.
func Got(fs []api.Finding) []string {
	out := make([]string, 0, len(fs))
	for _, f := range fs {
		out = append(out, string(f.Code)+"@"+strconv.Itoa(f.Line))
	}
	slices.Sort(out)
	return out
}

// Describe renders findings one per line, for failure messages.
func Describe(fs []api.Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString("\n\t")
		b.WriteString(f.String())
	}
	return b.String()
}

// Numbered renders src with line numbers, for failure messages.
func Numbered(src string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimRight(src, "\n"), "\n") {
		fmt.Fprintf(&b, "\n%3d| %s", i+1, l)
	}
	return b.String()
}
