// Package decode turns Istio YAML and JSON documents into api.Objects whose
// specs are istio.io/api messages.
//
// It walks go.yaml.in/yaml/v3 nodes against the protobuf descriptors itself
// instead of converting to JSON and calling protojson, because that is the
// only way to report an unknown field, a bad enum or a malformed duration at
// the line where it is written, and to record the line of every field for
// validation findings. Accepted syntax follows what Istio's own strict
// decoder accepts: JSON (camelCase) or proto (snake_case) field names, enum
// names or numbers, quoted or bare integers, and durations in Go syntax
// ("500ms", "1.5s", "1m").
package decode

import (
	"bytes"
	"hash/fnv"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/modules/galley/api"
)

// Options tune a Decoder. The zero value is ready to use.
type Options struct {
	// DefaultNamespace is given to objects without metadata.namespace;
	// empty means "default", as in Istio.
	DefaultNamespace string
	// MaxNodes bounds the YAML nodes visited per document, counting each
	// expansion of an alias, so that "billion laughs" documents fail fast
	// instead of exhausting memory. Zero means 1,000,000.
	MaxNodes int
}

const defaultMaxNodes = 1_000_000

// Result is what decoding produced. Objects decoded cleanly. Rejected
// objects had decoding errors; they are decoded as far as possible and kept
// so that whole-set analysis can still resolve references to them, but they
// must not be accepted. Findings describe every problem met.
type Result struct {
	Objects  []*api.Object
	Rejected []*api.Object
	Findings []api.Finding
	// Files lists the files read, in the order read.
	Files []string
}

// Merge appends other to r.
func (r *Result) Merge(other Result) {
	r.Objects = append(r.Objects, other.Objects...)
	r.Rejected = append(r.Rejected, other.Rejected...)
	r.Findings = append(r.Findings, other.Findings...)
	r.Files = append(r.Files, other.Files...)
}

// Decoder decodes documents with fixed options. It holds no state between
// calls and is safe for concurrent use.
type Decoder struct {
	opts Options
}

// New returns a Decoder with opts.
func New(opts Options) *Decoder {
	if opts.DefaultNamespace == "" {
		opts.DefaultNamespace = api.DefaultNamespace
	}
	if opts.MaxNodes <= 0 {
		opts.MaxNodes = defaultMaxNodes
	}
	return &Decoder{opts: opts}
}

// Decode decodes data with default options. file names the source in
// findings; a ".json" suffix selects JSON handling.
func Decode(file string, data []byte) Result {
	return New(Options{}).Decode(file, data)
}

// Decode decodes every document in data. file names the source in findings
// and objects; a ".json" suffix selects JSON handling (one document, tabs
// allowed).
func (d *Decoder) Decode(file string, data []byte) Result {
	var r Result
	// One buffer for the spec encodings that Hash digests, reused by every
	// document of the call.
	scratch := make([]byte, 0, 4096)
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if isJSON(file) {
		// JSON forbids raw tabs inside strings, so every tab is whitespace;
		// YAML does not accept tabs as indentation, so turn them into spaces.
		if bytes.IndexByte(data, '\t') >= 0 {
			data = bytes.ReplaceAll(data, []byte("\t"), []byte(" "))
		}
		d.decodeChunk(&r, file, data, 1, &scratch)
		return r
	}
	for _, c := range splitDocuments(data) {
		d.decodeChunk(&r, file, c.data, c.line, &scratch)
	}
	return r
}

func isJSON(file string) bool {
	return strings.EqualFold(filepath.Ext(file), ".json")
}

// chunk is one YAML document's text and the file line it starts on.
type chunk struct {
	data []byte
	line int
}

// splitDocuments cuts a multi-document YAML stream at "---" lines. Splitting
// before parsing keeps one malformed document from hiding the others, which a
// streaming yaml.Decoder cannot recover from. A "---" in column 0 is a
// document marker even inside block scalars, so this matches YAML. Lines end
// where yaml.v3 ends them (see lineBreak), so a file saved with bare CRs is
// split into all its documents and its line numbers agree with the parser's.
func splitDocuments(data []byte) []chunk {
	var out []chunk
	start, startLine, line := 0, 1, 1
	for i := 0; i < len(data); line++ {
		end, next := nextLine(data, i)
		if i > start && isDocMarker(data[i:end]) {
			out = append(out, chunk{data: data[start:i], line: startLine})
			start, startLine = i, line
		}
		i = next
	}
	if start < len(data) {
		out = append(out, chunk{data: data[start:], line: startLine})
	}
	return out
}

// lineBreak returns the width of the line break at data[i], or 0. These are
// the breaks yaml.v3 counts (YAML 1.1): LF, CR LF, a bare CR, and the
// Unicode NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR. Counting fewer would
// make galley's line numbers disagree with the parser's.
func lineBreak(data []byte, i int) int {
	switch c := data[i]; c {
	case '\n':
		return 1
	case '\r':
		if i+1 < len(data) && data[i+1] == '\n' {
			return 2
		}
		return 1
	case 0xC2: // U+0085 NEL
		if i+1 < len(data) && data[i+1] == 0x85 {
			return 2
		}
	case 0xE2: // U+2028, U+2029
		if i+2 < len(data) && data[i+1] == 0x80 && (data[i+2] == 0xA8 || data[i+2] == 0xA9) {
			return 3
		}
	}
	return 0
}

// nextLine returns where the line starting at data[i] ends (before its
// break) and where the next one starts.
func nextLine(data []byte, i int) (end, next int) {
	for j := i; j < len(data); j++ {
		if w := lineBreak(data, j); w > 0 {
			return j, j + w
		}
	}
	return len(data), len(data)
}

// isDocMarker reports whether a line, without its break, is "---" alone or
// followed by a space or tab.
func isDocMarker(l []byte) bool {
	if !bytes.HasPrefix(l, []byte("---")) {
		return false
	}
	return len(l) == 3 || l[3] == ' ' || l[3] == '\t'
}

// decodeChunk parses one document whose first line is file line firstLine.
func (d *Decoder) decodeChunk(r *Result, file string, data []byte, firstLine int, scratch *[]byte) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlErrorLine(err.Error())
		// Errors found at the end of the input ("unclosed [") are reported
		// at the end; the last line with content is the more useful place.
		line = min(max(line, 1), lastContentLine(data))
		r.Findings = append(r.Findings, api.Finding{
			Code:     api.CodeSyntax,
			Severity: api.SeverityError,
			File:     file,
			Line:     firstLine + line - 1,
			Message:  "malformed YAML: " + msg,
		})
		return
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return // empty document, only comments, or a bare "---"
	}
	dd := docDecoder{
		d:       d,
		file:    file,
		offset:  firstLine - 1,
		budget:  d.opts.MaxNodes,
		scratch: scratch,
	}
	dd.decodeRoot(r, doc.Content[0])
}

// lastContentLine returns the 1-based number of the last line of data that
// is not blank, or 1.
func lastContentLine(data []byte) int {
	last := 1
	for i, line := 0, 1; i < len(data); line++ {
		end, next := nextLine(data, i)
		if len(bytes.Trim(data[i:end], " \t")) > 0 {
			last = line
		}
		i = next
	}
	return last
}

// parserProblems are the messages of yaml.v3 parser (as opposed to scanner)
// errors. yaml.v3 prints their line 0-based and scanner errors' 1-based, so
// the former need one added.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// yamlErrorLine extracts the 1-based line from yaml.v3's "yaml: line N: msg"
// errors.
func yamlErrorLine(s string) (int, string) {
	s = strings.TrimPrefix(s, "yaml: ")
	rest, ok := strings.CutPrefix(s, "line ")
	if !ok {
		return 0, s
	}
	num, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return 0, s
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return 0, s
	}
	if parserProblems[msg] {
		n++
	}
	return n, msg
}

// Hash digests what an object means: kind, identity, labels, annotations and
// the deterministic protobuf encoding of its spec. Comments, key order and
// formatting do not change it.
func Hash(o *api.Object) uint64 {
	var scratch []byte
	return hashObject(o, &scratch)
}

// hashObject is Hash with a reusable encoding buffer.
func hashObject(o *api.Object, scratch *[]byte) uint64 {
	h := fnv.New64a()
	write := func(s string) {
		_, _ = h.Write([]byte(s))
		_, _ = h.Write([]byte{0})
	}
	write(o.Kind.String())
	write(o.Namespace)
	write(o.Name)
	for _, m := range []map[string]string{o.Labels, o.Annotations} {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			write(k)
			write(m[k])
		}
		write("\x01")
	}
	if o.Spec != nil {
		b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend((*scratch)[:0], o.Spec)
		if err == nil {
			_, _ = h.Write(b)
			*scratch = b
		}
	}
	return h.Sum64()
}
