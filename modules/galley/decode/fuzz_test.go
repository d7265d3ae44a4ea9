package decode_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
)

// yamlBreaks turns every line break yaml.v3 counts into LF, so the fuzzer's
// line bound agrees with the parser on CR-only and Unicode-separated input.
var yamlBreaks = strings.NewReplacer("\r\n", "\n", "\r", "\n", "\u0085", "\n", "\u2028", "\n", "\u2029", "\n")

// FuzzDecode feeds arbitrary bytes to the decoder as YAML or JSON. Decoding
// must never panic, and what it returns must be well formed: every finding
// documented and located inside the input, every object keyed and sourced.
// Without -fuzz it runs the seed corpus only, so it is part of go test.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("\r\r0"), false)
	f.Add([]byte("a: 1\r---\r0\u2028---\u00850"), false)
	for _, c := range decodeCases {
		f.Add([]byte(c.src), false)
	}
	seeds, _ := filepath.Glob("../../../examples/*/*.yaml")
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b, false)
		}
	}
	f.Add([]byte(`{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "a"}, "spec": {"mtls": {"mode": "STRICT"}}}`), true)
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: Sidecar\n  metadata: {name: a}\n  spec: {egress: [{hosts: [./*]}]}\n"), false)
	f.Add([]byte("a: &a [*a]\n"), false)
	f.Add([]byte("---\n---\n\xef\xbb\xbf---\n"), false)
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: a, trafficPolicy: {portLevelSettings: [{port: {number: 1}}]}}\n"), false)

	dec := decode.New(decode.Options{MaxNodes: 50_000})
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		name := "fuzz.yaml"
		if asJSON {
			name = "fuzz.json"
		}
		res := dec.Decode(name, data)
		lines := strings.Count(yamlBreaks.Replace(string(data)), "\n") + 2
		for _, fd := range res.Findings {
			if _, ok := api.LookupCode(fd.Code); !ok {
				t.Fatalf("undocumented code in %+v", fd)
			}
			if fd.Severity < api.SeverityError || fd.Severity > api.SeverityInfo {
				t.Fatalf("bad severity in %+v", fd)
			}
			if fd.Message == "" || fd.File != name {
				t.Fatalf("incomplete finding %+v", fd)
			}
			if fd.Line < 0 || fd.Line > lines {
				t.Fatalf("line %d outside the %d-line input: %+v", fd.Line, lines, fd)
			}
		}
		for _, o := range append(res.Objects, res.Rejected...) {
			if o.Spec == nil || o.Kind.Kind == "" || o.Source.File != name {
				t.Fatalf("incomplete object %+v", o)
			}
			_ = o.Lines.Map()
			_ = o.Line("spec.http[0].route[0].destination.host")
		}
	})
}
