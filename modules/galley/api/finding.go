package api

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Severity ranks a finding. Errors make a config set unacceptable; warnings
// and infos are reported but do not block it.
type Severity uint8

// Severities, most severe first so that sorting by value puts errors on top.
const (
	SeverityError Severity = iota + 1
	SeverityWarning
	SeverityInfo
)

// String returns ERROR, WARNING or INFO, the spelling used in text output.
func (s Severity) String() string {
	switch s {
	case SeverityError:
		return "ERROR"
	case SeverityWarning:
		return "WARNING"
	case SeverityInfo:
		return "INFO"
	}
	return "UNKNOWN"
}

// MarshalText encodes the severity as its String form, for JSON output.
func (s Severity) MarshalText() ([]byte, error) {
	if s < SeverityError || s > SeverityInfo {
		return nil, fmt.Errorf("marshal severity: invalid value %d", s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText accepts the String form in any letter case.
func (s *Severity) UnmarshalText(b []byte) error {
	switch strings.ToUpper(string(b)) {
	case "ERROR":
		*s = SeverityError
	case "WARNING":
		*s = SeverityWarning
	case "INFO":
		*s = SeverityInfo
	default:
		return fmt.Errorf("unmarshal severity: unknown value %q", b)
	}
	return nil
}

// Finding is one problem found in config: what (Code, Message), how bad
// (Severity), in which object (Object, may be empty for problems with a file
// as a whole) and where (File, Line, Field).
type Finding struct {
	Code     Code     `json:"code"`
	Severity Severity `json:"severity"`
	// Object is the key of the object concerned, kind/namespace/name.
	Object Key    `json:"object,omitempty"`
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	// Field is the path of the field concerned, e.g. spec.http[0].timeout.
	Field string `json:"field,omitempty"`
	// Message says what is wrong and, where it can, how to fix it.
	Message string `json:"message"`
}

// String renders the finding as one line of text output:
// file:line: SEVERITY CODE kind/ns/name: field: message.
func (f Finding) String() string {
	var b strings.Builder
	if f.File != "" {
		b.WriteString(f.File)
		if f.Line > 0 {
			b.WriteByte(':')
			b.WriteString(fmt.Sprint(f.Line))
		}
		b.WriteString(": ")
	}
	b.WriteString(f.Severity.String())
	b.WriteByte(' ')
	b.WriteString(string(f.Code))
	if f.Object != "" {
		b.WriteByte(' ')
		b.WriteString(string(f.Object))
	}
	b.WriteString(": ")
	if f.Field != "" {
		b.WriteString(f.Field)
		b.WriteString(": ")
	}
	b.WriteString(f.Message)
	return b.String()
}

// CompareFindings orders findings by file, line, severity, code, object,
// field and message, the order text output uses. Equal findings compare 0, so
// sorting is deterministic.
func CompareFindings(a, b Finding) int {
	return cmp.Or(
		cmp.Compare(a.File, b.File),
		cmp.Compare(a.Line, b.Line),
		cmp.Compare(a.Severity, b.Severity),
		cmp.Compare(a.Code, b.Code),
		cmp.Compare(a.Object, b.Object),
		cmp.Compare(a.Field, b.Field),
		cmp.Compare(a.Message, b.Message),
	)
}

// SortFindings sorts findings in place with CompareFindings and drops exact
// duplicates, which arise when two checks reach the same conclusion.
func SortFindings(fs []Finding) []Finding {
	slices.SortFunc(fs, CompareFindings)
	return slices.Compact(fs)
}

// Counts tallies findings by severity.
type Counts struct {
	Errors   int `json:"errors"`
	Warnings int `json:"warnings"`
	Infos    int `json:"infos"`
}

// CountFindings tallies fs by severity.
func CountFindings(fs []Finding) Counts {
	var c Counts
	for i := range fs {
		switch fs[i].Severity {
		case SeverityError:
			c.Errors++
		case SeverityWarning:
			c.Warnings++
		default:
			c.Infos++
		}
	}
	return c
}

// HasErrors reports whether any finding is an error.
func HasErrors(fs []Finding) bool {
	for i := range fs {
		if fs[i].Severity == SeverityError {
			return true
		}
	}
	return false
}
