package decode_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/internal/galleytest"
)

func vs(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "VirtualService", "vs", body)
}

// decodeCases are documents whose "#!" markers give the expected decoding
// findings; documents without markers must decode cleanly.
var decodeCases = []struct {
	name string
	src  string
}{
	{"clean", vs(`
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"proto field names", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  retries: {attempts: 2, per_try_timeout: 1s, retry_on: 5xx}
`)},
	{"quoted integers and enum numbers", galleytest.Doc("networking.istio.io/v1", "DestinationRule", "dr", `
host: reviews
trafficPolicy:
  tls: {mode: 3}
  connectionPool: {tcp: {maxConnections: "100"}}
`)},
	{"go durations", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  timeout: 1m30s
`)},
	{"status is ignored", vs(`
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`) + "status:\n  conditions: []\n"},
	{"kubectl metadata is ignored", galleytest.DocMeta("networking.istio.io/v1", "VirtualService",
		`{name: vs, namespace: ns, uid: abc, resourceVersion: "1", generation: 2, creationTimestamp: "2024-01-01T00:00:00Z"}`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"all api versions", strings.ReplaceAll(vs("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]"), "networking.istio.io/v1", "networking.istio.io/v1alpha3") + "---\n" +
		strings.ReplaceAll(vs("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]"), "networking.istio.io/v1", "networking.istio.io/v1beta1")},

	{"unknown spec field", vs(`
hosts: [reviews]
gateway: [gw]  #! GAL1006
`)},
	{"unknown nested field", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: reviews}
    wieght: 10  #! GAL1006
`)},
	{"unknown top-level field", vs(`
hosts: [reviews]
`) + "extra: 1  #! GAL1006\n"},
	{"unknown metadata field", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: vs, namespace: ns, label: {a: b}}  #! GAL1006`, `
hosts: [reviews]
`)},
	{"string for a number", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: reviews}
    weight: heavy  #! GAL1007
`)},
	{"number for a string", vs(`
hosts:
- 123  #! GAL1007
`)},
	{"boolean for a string", vs(`
hosts:
- true  #! GAL1007
`)},
	{"quoted boolean", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  match:
  - ignoreUriCase: "yes"  #! GAL1007
`)},
	{"unknown enum value", galleytest.Doc("networking.istio.io/v1", "DestinationRule", "dr", `
host: reviews
trafficPolicy:
  tls:
    mode: MUTUAL_TLS  #! GAL1007
`)},
	{"undefined enum number", galleytest.Doc("networking.istio.io/v1", "DestinationRule", "dr", `
host: reviews
trafficPolicy:
  tls:
    mode: 9  #! GAL1007
`)},
	{"duration without unit", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  timeout: 10  #! GAL1007
`)},
	{"duration as a mapping", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  timeout: {seconds: 10}  #! GAL1007
`)},
	{"negative unsigned", vs(`
hosts: [a]
http:
- match:
  - port: -1  #! GAL1007
  route: [{destination: {host: a}}]
`)},
	{"int32 overflow", vs(`
hosts: [a]
http:
- route:
  - destination: {host: a}
    weight: 3000000000  #! GAL1007
`)},
	{"fractional integer", vs(`
hosts: [a]
http:
- route:
  - destination: {host: a}
    weight: 1.5  #! GAL1007
`)},
	{"scalar for a list", vs(`
hosts: reviews  #! GAL1007
`)},
	{"list for a mapping", vs(`
hosts: [a]
http:
- route:
  - destination:
    - host: a  #! GAL1007
`)},
	{"scalar for a map", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  match:
  - headers: x-user  #! GAL1007
`)},
	{"duplicate field", vs(`
hosts: [a]
hosts: [b]  #! GAL1008
`)},
	{"duplicate map key", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  match:
  - headers:
      x-a: {exact: "1"}
      x-a: {exact: "2"}  #! GAL1008
`)},
	{"duplicate through proto name", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  retries:
    perTryTimeout: 1s
    per_try_timeout: 2s  #! GAL1008
`)},
	{"two oneof members", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  match:
  - uri:
      exact: /a
      prefix: /b  #! GAL1009
`)},
	{"null list item", vs(`
hosts:
- a
-   #! GAL1007
`)},
	{"null map value", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  headers:
    request:
      set:
        x-a:  #! GAL1007
`)},
	{"label that is not a string", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: vs, namespace: ns, labels: {version: 1.0}}  #! GAL1007`, `
hosts: [a]
`)},
	{"missing name", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{namespace: ns}  #! GAL1005`, `
hosts: [a]
`)},
	{"missing metadata", "apiVersion: networking.istio.io/v1  #! GAL1005\nkind: VirtualService\nspec: {hosts: [a]}\n"},
	{"missing kind", "apiVersion: networking.istio.io/v1  #! GAL1002\nmetadata: {name: a}\n"},
	{"not a mapping", "- a  #! GAL1002\n- b\n"},
	{"scalar document", "hello  #! GAL1002\n"},
	{"unknown istio kind", "apiVersion: networking.istio.io/v1\nkind: VirtualServce  #! GAL1003\nmetadata: {name: a}\n"},
	{"unsupported istio kind", "apiVersion: telemetry.istio.io/v1\nkind: Telemetry  #! GAL1003\nmetadata: {name: a}\n"},
	{"kubernetes kind", "apiVersion: apps/v1\nkind: Deployment  #! GAL1010\nmetadata: {name: a}\n"},
	{"unserved version", "apiVersion: networking.istio.io/v2  #! GAL1004\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n"},
	{"security v1alpha3", "apiVersion: security.istio.io/v1alpha3  #! GAL1004\nkind: PeerAuthentication\nmetadata: {name: a}\n"},
	{"version without group", "apiVersion: v1\nkind: VirtualService  #! GAL1004\nmetadata: {name: a}\nspec: {hosts: [a]}\n"},
	{"kind in the wrong group", "apiVersion: security.istio.io/v1\nkind: VirtualService  #! GAL1004\nmetadata: {name: a}\n"},
	{"malformed yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a  #! GAL1001\n"},
	{"merge keys", vs(`
hosts: [a]
http:
- route: [{destination: {host: a}}]
  <<: {timeout: 1s}  #! GAL1006
`)},
	{"bad second document", vs("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]") + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [a  #! GAL1001\n---\n" + vs("hosts: [c]\nhttp: [{route: [{destination: {host: c}}]}]")},
}

func TestDecodeCases(t *testing.T) {
	for _, c := range decodeCases {
		t.Run(c.name, func(t *testing.T) {
			res := decode.Decode("case.yaml", []byte(c.src))
			want, got := galleytest.Expected(c.src), galleytest.Got(res.Findings)
			if !slices.Equal(want, got) {
				t.Errorf("findings differ\nwant %v\ngot  %v%s\nsource:%s", want, got, galleytest.Describe(res.Findings), galleytest.Numbered(c.src))
			}
			if len(want) == 0 && len(res.Rejected) > 0 {
				t.Errorf("clean case rejected %d objects", len(res.Rejected))
			}
			for _, f := range res.Findings {
				if _, ok := api.LookupCode(f.Code); !ok || f.Message == "" || f.Line == 0 {
					t.Errorf("bad finding %+v", f)
				}
			}
		})
	}
}

func TestDecodeObject(t *testing.T) {
	src := `# comment
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  labels: {app: reviews}
  annotations: {note: x}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
    timeout: 1.5s
`
	res := decode.New(decode.Options{DefaultNamespace: "bookstore"}).Decode("f.yaml", []byte(src))
	require.Empty(t, res.Findings)
	require.Len(t, res.Objects, 1)
	o := res.Objects[0]
	require.Equal(t, api.KindVirtualService, o.Kind)
	require.Equal(t, "networking.istio.io/v1beta1", o.APIVersion)
	require.Equal(t, api.Key("VirtualService/bookstore/reviews"), o.Key())
	require.Equal(t, api.Source{File: "f.yaml", Line: 2}, o.Source)
	require.Equal(t, map[string]string{"app": "reviews"}, o.Labels)
	require.Equal(t, map[string]string{"note": "x"}, o.Annotations)
	spec := o.Spec.(*networking.VirtualService)
	require.Equal(t, int32(10), spec.GetHttp()[0].GetRoute()[1].GetWeight())
	require.Equal(t, 1500*time.Millisecond, spec.GetHttp()[0].GetTimeout().AsDuration())
	require.NotZero(t, o.Hash)

	for path, line := range map[string]int{
		"metadata.name":                     5,
		"metadata.labels[app]":              6,
		"spec":                              8,
		"spec.hosts[0]":                     9,
		"spec.http[0]":                      11,
		"spec.http[0].route[1].weight":      15,
		"spec.http[0].route[1].destination": 14,
		"spec.http[0].timeout":              16,
	} {
		got, ok := o.Lines.Line(path)
		require.True(t, ok, path)
		require.Equal(t, line, got, path)
	}
	_, ok := o.Lines.Line("spec.http[0].retries")
	require.False(t, ok)
	require.Equal(t, 11, o.Line("spec.http[0].retries.attempts"), "missing fields fall back to the nearest parent")
	require.Equal(t, 15, o.Lines.Map()["spec.http[0].route[1].weight"])
}

func TestHashIgnoresFormatting(t *testing.T) {
	a := decode.Decode("a.yaml", []byte(vs("hosts: [a, b]\nhttp: [{route: [{destination: {host: a}}]}]")))
	b := decode.Decode("b.yaml", []byte("# moved around\n"+vs(`
http:
- route:
  - destination:
      host: a
hosts:
- a
- b
`)))
	c := decode.Decode("c.yaml", []byte(vs("hosts: [a, c]\nhttp: [{route: [{destination: {host: a}}]}]")))
	require.Len(t, a.Objects, 1)
	require.Len(t, b.Objects, 1)
	require.Len(t, c.Objects, 1)
	require.Equal(t, a.Objects[0].Hash, b.Objects[0].Hash)
	require.NotEqual(t, a.Objects[0].Hash, c.Objects[0].Hash)
	require.Equal(t, a.Objects[0].Hash, decode.Hash(a.Objects[0]))
}

func TestDecodeJSON(t *testing.T) {
	src := "{\n\t\"apiVersion\": \"security.istio.io/v1\",\n\t\"kind\": \"PeerAuthentication\",\n\t\"metadata\": {\"name\": \"default\", \"namespace\": \"bookstore\"},\n\t\"spec\": {\n\t\t\"mtls\": {\"mode\": \"STRICTT\"}\n\t}\n}\n"
	res := decode.Decode("pa.json", []byte(src))
	require.Len(t, res.Findings, 1)
	require.Equal(t, api.CodeBadValue, res.Findings[0].Code)
	require.Equal(t, 6, res.Findings[0].Line)
	require.Equal(t, "spec.mtls.mode", res.Findings[0].Field)
	require.Contains(t, res.Findings[0].Message, `did you mean "STRICT"`)

	ok := decode.Decode("pa.json", []byte(strings.Replace(src, "STRICTT", "STRICT", 1)))
	require.Empty(t, ok.Findings)
	require.Equal(t, security.PeerAuthentication_MutualTLS_STRICT, ok.Objects[0].Spec.(*security.PeerAuthentication).GetMtls().GetMode())
}

func TestDecodeList(t *testing.T) {
	src := `apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: a}
  spec: {hosts: [a.example.com], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}]}
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: b}
  spec: {hosts: [b.example.com], bogus: 1}
`
	res := decode.Decode("list.yaml", []byte(src))
	require.Len(t, res.Objects, 1)
	require.Len(t, res.Rejected, 1)
	require.Equal(t, 4, res.Objects[0].Source.Line)
	require.Equal(t, 8, res.Rejected[0].Source.Line)
	require.Len(t, res.Findings, 1)
	require.Equal(t, 11, res.Findings[0].Line)
	require.Equal(t, api.Key("ServiceEntry/default/b"), res.Findings[0].Object)
}

func TestAliasBomb(t *testing.T) {
	// Aliases let a small document describe a huge one; the node budget
	// stops decoding long before it is expanded.
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = "k" + string(rune('0'+i)) + ": *h"
	}
	rep := func(s string, n int) string { return strings.TrimSuffix(strings.Repeat(s+", ", n), ", ") }
	src := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n" +
		"h: &h {exact: a}\n" +
		"m: &m {headers: {" + strings.Join(keys, ", ") + "}}\n" +
		"r: &r {match: [" + rep("*m", 50) + "], route: [{destination: {host: a}}]}\n" +
		"spec:\n  hosts: [a]\n  http: [" + rep("*r", 50) + "]\n"
	res := decode.New(decode.Options{MaxNodes: 10_000}).Decode("bomb.yaml", []byte(src))
	tooComplex := 0
	for _, f := range res.Findings {
		if f.Code == api.CodeTooComplex {
			tooComplex++
		}
	}
	require.Equal(t, 1, tooComplex, "want one GAL1012: %s", galleytest.Describe(res.Findings))
	require.Len(t, res.Rejected, 1)

	// The same document within budget decodes (apart from the anchor keys).
	res = decode.New(decode.Options{}).Decode("bomb.yaml", []byte(src))
	for _, f := range res.Findings {
		require.Equal(t, api.CodeUnknownField, f.Code, f.String())
	}
}

func TestSyntaxErrorLines(t *testing.T) {
	src := "a: 1\n---\nb: [\n---\nc: 3\n"
	res := decode.Decode("s.yaml", []byte(src))
	var syntax []api.Finding
	for _, f := range res.Findings {
		if f.Code == api.CodeSyntax {
			syntax = append(syntax, f)
		}
	}
	require.Len(t, syntax, 1)
	require.Equal(t, 3, syntax[0].Line)
	// The documents around the broken one are still decoded (and rejected
	// for lacking apiVersion and kind).
	require.Len(t, res.Findings, 3)
}

// TestLineBreaks covers files whose lines end in something other than LF.
// yaml.v3 breaks lines at CR, CR LF, NEL, LS and PS too, so the document
// splitter must as well: otherwise a CR-only file decodes as one document
// (silently dropping the rest) and findings point past the end of the file.
func TestLineBreaks(t *testing.T) {
	doc := func(name string) string {
		return "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: " + name + "}\nspec: {servers: []}\n"
	}
	two := doc("a") + "---\n" + doc("b") + "---\nhosts: [x]\n"
	for _, tc := range []struct{ name, br string }{
		{"LF", "\n"}, {"CRLF", "\r\n"}, {"CR", "\r"}, {"NEL", "\u0085"}, {"LS", "\u2028"}, {"PS", "\u2029"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.ReplaceAll(two, "\n", tc.br)
			res := decode.Decode("b.yaml", []byte(src))
			require.Len(t, res.Objects, 2)
			require.Equal(t, 6, res.Objects[1].Source.Line)
			require.Len(t, res.Findings, 1, galleytest.Describe(res.Findings))
			require.Equal(t, 11, res.Findings[0].Line, res.Findings[0].String())
		})
	}
	// The fuzzer's find: a bare-CR document reported one line past the end.
	res := decode.Decode("f.yaml", []byte("\r\r0"))
	require.Len(t, res.Findings, 1)
	require.Equal(t, 3, res.Findings[0].Line)
}

func TestLoadPaths(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		require.NoError(t, writeFile(dir+"/"+name, content))
	}
	write("a.yaml", vs("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]"))
	write("sub/b.yml", strings.Replace(vs("hosts: [b]\nhttp: [{route: [{destination: {host: b}}]}]"), "name: vs", "name: b", 1))
	write("sub/c.json", `{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}, "spec": {"servers": []}}`)
	write("notes.txt", "not config")
	write(".hidden/d.yaml", "garbage: [")

	res := decode.New(decode.Options{}).LoadPaths(dir, dir+"/missing.yaml")
	require.Len(t, res.Objects, 3)
	require.Len(t, res.Files, 3)
	require.Len(t, res.Findings, 1)
	require.Equal(t, api.CodeUnreadable, res.Findings[0].Code)
	require.Equal(t, dir+"/missing.yaml", res.Findings[0].File)
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}

func TestKinds(t *testing.T) {
	for _, k := range api.Kinds() {
		require.NotNil(t, decode.NewSpec(k), k.String())
		require.NotEmpty(t, k.Versions())
		for _, v := range k.Versions() {
			require.True(t, k.AcceptsVersion(v))
		}
	}
	require.Nil(t, decode.NewSpec(api.Kind{Group: "x", Kind: "Y"}))
}
