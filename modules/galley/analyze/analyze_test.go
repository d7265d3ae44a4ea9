package analyze_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/modules/galley/analyze"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/internal/galleytest"
	"github.com/meshd/meshd/modules/galley/validate"
)

// docNS builds a document of kind in namespace ns.
func docNS(kind, ns, name, body string) string {
	k, ok := api.KindByName(kind)
	if !ok {
		panic("unknown kind " + kind)
	}
	return galleytest.DocMeta(k.Group+"/v1", kind, "{name: "+name+", namespace: "+ns+"}", body)
}

// doc builds a document of kind in namespace "ns".
func doc(kind, name, body string) string { return docNS(kind, "ns", name, body) }

// set joins documents into one multi-document source.
func set(docs ...string) string { return strings.Join(docs, "---\n") }

// base is a small, clean mesh: the reviews service with two versions and a
// DestinationRule defining both, and the ratings service without one.
var base = []string{
	doc("ServiceEntry", "reviews", `
hosts: [reviews.ns.svc.cluster.local]
location: MESH_INTERNAL
resolution: STATIC
ports: [{number: 9080, name: http, protocol: HTTP}]
workloadSelector: {labels: {app: reviews}}
`),
	doc("WorkloadEntry", "reviews-v1", `
address: 127.0.0.1
ports: {http: 19080}
labels: {app: reviews, version: v1}
`),
	doc("WorkloadEntry", "reviews-v2", `
address: 127.0.0.1
ports: {http: 19081}
labels: {app: reviews, version: v2}
`),
	doc("DestinationRule", "reviews", `
host: reviews
subsets:
- {name: v1, labels: {version: v1}}
- {name: v2, labels: {version: v2}}
`),
	doc("WorkloadEntry", "productpage", `
address: 127.0.0.1
labels: {app: productpage}
`),
	doc("ServiceEntry", "ratings", `
hosts: [ratings.ns.svc.cluster.local]
location: MESH_INTERNAL
resolution: STATIC
ports: [{number: 9080, name: http, protocol: HTTP}]
endpoints: [{address: 127.0.0.1, labels: {app: ratings}}]
`),
}

// withBase prepends the base mesh to docs.
func withBase(docs ...string) string { return set(append(slices.Clone(base), docs...)...) }

type hosts map[string]bool

func (h hosts) HasHost(host string) bool { return h[host] }

type workloads map[string][]map[string]string

func (w workloads) HasWorkload(ns string, sel map[string]string) bool {
	for _, labels := range w[ns] {
		match := true
		for k, v := range sel {
			if labels[k] != v {
				match = false
			}
		}
		if match {
			return true
		}
	}
	return false
}

// acase is one analyzer case: the "#!" markers in src give the expected
// analysis findings.
type acase struct {
	name string
	src  string
	opts analyze.Options
}

var cases = map[string][]acase{
	"duplicates": {
		{name: "same object twice", src: withBase(
			doc("VirtualService", "reviews", "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews}}]}]"),
			galleytest.DocMeta("networking.istio.io/v1", "VirtualService", "{name: reviews, namespace: ns}  #! GAL3001", "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews}}]}]"),
		)},
		{name: "same name in other namespace", src: withBase(
			doc("VirtualService", "reviews", "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews}}]}]"),
			docNS("VirtualService", "other", "reviews", "hosts: [ratings.ns.svc.cluster.local]\nhttp: [{route: [{destination: {host: ratings.ns.svc.cluster.local}}]}]"),
		)},
	},
	"destinations": {
		{name: "known host and subset", src: withBase(doc("VirtualService", "reviews", `
hosts: [reviews]
http:
- route:
  - {destination: {host: reviews, subset: v1}, weight: 50}
  - {destination: {host: reviews.ns.svc.cluster.local, subset: v2}, weight: 50}
`))},
		{name: "undefined subset", src: withBase(doc("VirtualService", "reviews", `
hosts: [reviews]
http:
- route:
  - destination:
      host: reviews
      subset: v3  #! GAL3002
`))},
		{name: "subset without destination rule", src: withBase(doc("VirtualService", "ratings", `
hosts: [ratings]
http:
- route:
  - destination:
      host: ratings
      subset: v1  #! GAL3002
`))},
		{name: "destination rule not exported", src: withBase(docNS("VirtualService", "other", "reviews", `
hosts: [reviews.ns.svc.cluster.local]
http:
- route:
  - destination:
      host: reviews.ns.svc.cluster.local
      subset: v1
`), docNS("DestinationRule", "ns", "private", `
host: ratings
exportTo: ["."]
subsets: [{name: v1}]
`), docNS("VirtualService", "other", "ratings", `
hosts: [ratings.ns.svc.cluster.local]
http:
- route:
  - destination:
      host: ratings.ns.svc.cluster.local
      subset: v1  #! GAL3002
`))},
		{name: "unknown external host", src: withBase(doc("VirtualService", "api", `
hosts: [api.example.com]
http:
- route:
  - destination:
      host: api.example.com  #! GAL3003
`))},
		{name: "unknown short host offline", src: withBase(doc("VirtualService", "payments", `
hosts: [payments]
http:
- route:
  - destination:
      host: payments  #! GAL3004
`))},
		{name: "unknown cluster host offline", src: withBase(doc("VirtualService", "payments", `
hosts: [payments.billing.svc.cluster.local]
http:
- route:
  - destination:
      host: payments.billing.svc.cluster.local  #! GAL3004
`))},
		{name: "host known to the registry", src: withBase(doc("VirtualService", "payments", `
hosts: [payments]
http:
- route:
  - destination: {host: payments}
`)), opts: analyze.Options{Hosts: hosts{"payments.ns.svc.cluster.local": true}}},
		{name: "registry is authoritative", src: withBase(doc("VirtualService", "payments", `
hosts: [payments]
http:
- route:
  - destination:
      host: payments  #! GAL3003
`)), opts: analyze.Options{Hosts: hosts{}}},
		{name: "service entry exported elsewhere", src: withBase(docNS("ServiceEntry", "other", "api", `
hosts: [api.example.com]
exportTo: ["."]
resolution: DNS
ports: [{number: 443, name: tls, protocol: TLS}]
`), doc("VirtualService", "api", `
hosts: [api.example.com]
tls:
- match: [{sniHosts: [api.example.com]}]
  route:
  - destination:
      host: api.example.com  #! GAL3003
`))},
		{name: "wildcard service entry", src: withBase(doc("ServiceEntry", "google", `
hosts: ["*.googleapis.com"]
resolution: DYNAMIC_DNS
ports: [{number: 443, name: tls, protocol: TLS}]
`), doc("VirtualService", "storage", `
hosts: [storage.googleapis.com]
tls:
- match: [{sniHosts: [storage.googleapis.com]}]
  route: [{destination: {host: storage.googleapis.com}}]
`))},
		{name: "mirror to unknown host", src: withBase(doc("VirtualService", "reviews", `
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirror:
    host: shadow.example.com  #! GAL3003
`))},
		{name: "port required", src: withBase(doc("ServiceEntry", "multi", `
hosts: [multi.example.com]
resolution: DNS
ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: admin, protocol: HTTP}]
`), doc("VirtualService", "multi", `
hosts: [multi.example.com]
http:
- route:
  - destination: {host: multi.example.com}  #! GAL3016
    weight: 50
  - destination: {host: multi.example.com, port: {number: 8080}}
    weight: 50
`))},
	},
	"gateways": {
		{name: "missing gateway", src: withBase(doc("VirtualService", "ingress", `
hosts: [books.example.com]
gateways:
- books-gateway  #! GAL3005
http: [{route: [{destination: {host: reviews}}]}]
`))},
		{name: "gateway in another namespace", src: withBase(docNS("Gateway", "istio-system", "ingress", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["ns/*.example.com"]}]
`), doc("VirtualService", "ingress", `
hosts: [books.example.com]
gateways: [istio-system/ingress, mesh]
http: [{route: [{destination: {host: reviews}}]}]
`))},
		{name: "legacy gateway name", src: withBase(docNS("Gateway", "istio-system", "ingress", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
`), doc("VirtualService", "ingress", `
hosts: [books.example.com]
gateways: [ingress.istio-system]
http: [{route: [{destination: {host: reviews}}]}]
`))},
		{name: "missing gateway in a match", src: withBase(doc("Gateway", "gw", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
`), doc("VirtualService", "ingress", `
hosts: [books.example.com]
gateways: [gw]
http:
- match:
  - gateways:
    - other-gw  #! GAL3005
  route: [{destination: {host: reviews}}]
`))},
		{name: "host not served by the gateway", src: withBase(doc("Gateway", "gw", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [books.example.com]}]
`), doc("VirtualService", "ingress", `
hosts: [music.example.com]
gateways:
- gw  #! GAL3015
http: [{route: [{destination: {host: reviews}}]}]
`))},
		{name: "gateway server restricted to another namespace", src: withBase(docNS("Gateway", "istio-system", "ingress", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["other/*"]}]
`), doc("VirtualService", "ingress", `
hosts: [books.example.com]
gateways:
- istio-system/ingress  #! GAL3015
http: [{route: [{destination: {host: reviews}}]}]
`))},
	},
	"delegates": {
		{name: "delegate exists", src: withBase(doc("VirtualService", "root", `
hosts: [reviews]
http:
- match: [{uri: {prefix: /v1}}]
  delegate: {name: reviews-v1}
`), doc("VirtualService", "reviews-v1", `
http: [{route: [{destination: {host: reviews, subset: v1}}]}]
`))},
		{name: "missing delegate", src: withBase(doc("VirtualService", "root", `
hosts: [reviews]
http:
- match: [{uri: {prefix: /v1}}]
  delegate:
    name: reviews-v1  #! GAL3013
`))},
		{name: "delegate with hosts", src: withBase(doc("VirtualService", "root", `
hosts: [reviews]
http:
- delegate:
    name: ratings  #! GAL3013
`), doc("VirtualService", "ratings", `
hosts: [ratings]
http: [{route: [{destination: {host: ratings}}]}]
`))},
	},
	"virtualservice-conflicts": {
		{name: "two mesh routes for one host", src: withBase(doc("VirtualService", "reviews-a", `
hosts: [reviews]
http: [{route: [{destination: {host: reviews, subset: v1}}]}]
`), doc("VirtualService", "reviews-b", `
hosts:
- reviews.ns.svc.cluster.local  #! GAL3006
http: [{route: [{destination: {host: reviews, subset: v2}}]}]
`))},
		{name: "disjoint export scopes", src: withBase(doc("VirtualService", "reviews-a", `
hosts: [reviews.ns.svc.cluster.local]
exportTo: ["."]
http: [{route: [{destination: {host: reviews, subset: v1}}]}]
`), docNS("VirtualService", "other", "reviews-b", `
hosts: [reviews.ns.svc.cluster.local]
exportTo: ["."]
http: [{route: [{destination: {host: reviews.ns.svc.cluster.local, subset: v2}}]}]
`))},
		{name: "two routes on one gateway", src: withBase(doc("Gateway", "gw", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
`), doc("VirtualService", "a", `
hosts: [books.example.com]
gateways: [gw]
http: [{match: [{uri: {prefix: /a}}], route: [{destination: {host: reviews}}]}]
`), doc("VirtualService", "b", `
hosts:
- books.example.com  #! GAL3007
gateways: [ns/gw]
http: [{match: [{uri: {prefix: /b}}], route: [{destination: {host: reviews}}]}]
`))},
		{name: "same host on different gateways", src: withBase(doc("Gateway", "gw", `
servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
`), doc("VirtualService", "a", `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`), doc("VirtualService", "b", `
hosts: [reviews]
gateways: [gw]
http: [{route: [{destination: {host: reviews}}]}]
`))},
	},
	"destinationrule-conflicts": {
		{name: "duplicate subset", src: withBase(doc("DestinationRule", "reviews-extra", `
host: reviews.ns.svc.cluster.local
subsets:
- name: v2  #! GAL3008
  labels: {version: v2}
`))},
		{name: "two traffic policies", src: withBase(doc("DestinationRule", "ratings-tls", `
host: ratings
trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`), doc("DestinationRule", "ratings-lb", `
host: ratings.ns.svc.cluster.local
trafficPolicy:  #! GAL3008
  loadBalancer: {simple: RANDOM}
`))},
		{name: "merged rules", src: withBase(doc("DestinationRule", "reviews-tls", `
host: reviews  #! GAL3009
trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`))},
		{name: "rules in different namespaces", src: withBase(docNS("DestinationRule", "other", "reviews", `
host: reviews.ns.svc.cluster.local
subsets: [{name: v1, labels: {version: v1}}]
`))},
		{name: "rules for different workloads", src: withBase(doc("DestinationRule", "reviews-for-productpage", `
host: reviews
workloadSelector: {matchLabels: {app: reviews}}
subsets: [{name: v1, labels: {version: v1}}]
`))},
	},
	"shadowed-routes": {
		{name: "catch-all first", src: withBase(doc("VirtualService", "reviews", `
hosts: [reviews]
http:
- route: [{destination: {host: reviews, subset: v1}}]
- match: [{headers: {x-canary: {exact: "1"}}}]  #! GAL3010
  route: [{destination: {host: reviews, subset: v2}}]
- name: third  #! GAL3010
  match: [{uri: {prefix: /x}}]
  route: [{destination: {host: reviews, subset: v2}}]
`))},
		{name: "root prefix first", src: withBase(doc("VirtualService", "reviews", `
hosts: [reviews]
http:
- match: [{uri: {prefix: /}}]
  route: [{destination: {host: reviews, subset: v1}}]
- match: [{uri: {prefix: /api}}]  #! GAL3010
  route: [{destination: {host: reviews, subset: v2}}]
`))},
		{name: "specific first", src: withBase(doc("VirtualService", "reviews", `
hosts: [reviews]
http:
- match: [{headers: {x-canary: {exact: "1"}}}]
  route: [{destination: {host: reviews, subset: v2}}]
- match: [{uri: {prefix: /}, port: 9080}]
  route: [{destination: {host: reviews, subset: v1}}]
- route: [{destination: {host: reviews, subset: v1}}]
`))},
		{name: "tcp catch-all first", src: withBase(doc("ServiceEntry", "db", `
hosts: [db.example.com]
addresses: [10.0.0.5]
resolution: DNS
ports: [{number: 5432, name: pg, protocol: TCP}]
`), doc("VirtualService", "db", `
hosts: [db.example.com]
tcp:
- route: [{destination: {host: db.example.com}}]
- match: [{port: 5432}]  #! GAL3010
  route: [{destination: {host: db.example.com}}]
`))},
	},
	"mtls": {
		{name: "namespace strict, tls disabled", src: withBase(doc("PeerAuthentication", "default", `
mtls: {mode: STRICT}
`), doc("DestinationRule", "ratings", `
host: ratings
trafficPolicy:
  tls:
    mode: DISABLE  #! GAL3011
`))},
		{name: "mesh strict, tls disabled", src: withBase(docNS("PeerAuthentication", "istio-system", "default", `
mtls: {mode: STRICT}
`), doc("DestinationRule", "ratings", `
host: ratings
trafficPolicy:
  tls:
    mode: DISABLE  #! GAL3011
`))},
		{name: "permissive namespace", src: withBase(docNS("PeerAuthentication", "istio-system", "default", `
mtls: {mode: STRICT}
`), doc("PeerAuthentication", "default", `
mtls: {mode: PERMISSIVE}
`), doc("DestinationRule", "ratings", `
host: ratings
trafficPolicy: {tls: {mode: DISABLE}}
`))},
		{name: "workload strict overrides namespace", src: withBase(doc("PeerAuthentication", "default", `
mtls: {mode: PERMISSIVE}
`), doc("PeerAuthentication", "reviews", `
selector: {matchLabels: {app: reviews}}
mtls: {mode: STRICT}
`), doc("DestinationRule", "reviews-plain", `
host: reviews
workloadSelector: {matchLabels: {app: productpage}}
trafficPolicy:
  tls:
    mode: DISABLE  #! GAL3011
`))},
		{name: "port exception", src: withBase(doc("PeerAuthentication", "reviews", `
selector: {matchLabels: {app: reviews}}
mtls: {mode: STRICT}
portLevelMtls:
  9080: {mode: PERMISSIVE}
`), doc("DestinationRule", "reviews-plain", `
host: reviews
workloadSelector: {matchLabels: {app: productpage}}
trafficPolicy:
  portLevelSettings:
  - port: {number: 9080}
    tls: {mode: DISABLE}
`))},
		{name: "mesh default strict", src: withBase(doc("DestinationRule", "ratings", `
host: ratings
trafficPolicy:
  tls:
    mode: DISABLE  #! GAL3011
`)), opts: analyze.Options{Mesh: core.MeshConfig{DefaultMTLSMode: core.MTLSStrict}}},
		{name: "subset disables tls for a strict version", src: withBase(doc("PeerAuthentication", "reviews-v2", `
selector: {matchLabels: {app: reviews, version: v2}}
mtls: {mode: STRICT}
`), doc("DestinationRule", "reviews-subsets", `
host: reviews
workloadSelector: {matchLabels: {app: productpage}}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy: {tls: {mode: DISABLE}}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    tls:
      mode: DISABLE  #! GAL3011
`))},
		{name: "cluster host without service entry", src: withBase(docNS("PeerAuthentication", "billing", "default", `
mtls: {mode: STRICT}
`), doc("DestinationRule", "payments", `
host: payments.billing.svc.cluster.local
trafficPolicy:
  tls:
    mode: DISABLE  #! GAL3011
`))},
	},
	"selectors": {
		{name: "policy selects nothing", src: withBase(doc("AuthorizationPolicy", "ratings", `
selector:
  matchLabels:  #! GAL3012
    app: rating
rules: [{}]
`))},
		{name: "sidecar selects a workload", src: withBase(doc("Sidecar", "reviews", `
workloadSelector: {labels: {app: reviews, version: v1}}
egress: [{hosts: ["./*"]}]
`))},
		{name: "root policy selects across namespaces", src: withBase(docNS("AuthorizationPolicy", "istio-system", "reviews", `
selector: {matchLabels: {app: reviews}}
rules: [{}]
`))},
		{name: "run-time workload", src: withBase(doc("PeerAuthentication", "legacy", `
selector: {matchLabels: {app: legacy}}
mtls: {mode: PERMISSIVE}
`)), opts: analyze.Options{Workloads: workloads{"ns": {{"app": "legacy", "tier": "db"}}}}},
		{name: "service entry without workloads", src: withBase(doc("ServiceEntry", "details", `
hosts: [details.ns.svc.cluster.local]
resolution: STATIC
ports: [{number: 9080, name: http, protocol: HTTP}]
workloadSelector:
  labels:  #! GAL3012
    app: details
`))},
		{name: "workload group labels", src: withBase(doc("WorkloadGroup", "details", `
metadata: {labels: {app: details}}
template: {serviceAccount: details}
`), doc("RequestAuthentication", "details", `
selector: {matchLabels: {app: details}}
jwtRules: [{issuer: https://auth.example.com}]
`))},
		{name: "request authentication selects nothing", src: withBase(doc("RequestAuthentication", "details", `
selector:
  matchLabels:  #! GAL3012
    app: details
jwtRules: [{issuer: https://auth.example.com}]
`))},
	},
	"subset-workloads": {
		{name: "subset matching no workload", src: withBase(doc("DestinationRule", "reviews-v3", `
host: reviews
workloadSelector: {matchLabels: {app: productpage}}
subsets:
- name: v3
  labels:  #! GAL3014
    version: v3
`))},
		{name: "endpoints labels", src: withBase(doc("DestinationRule", "ratings", `
host: ratings
subsets:
- name: all
  labels: {app: ratings}
- name: v9
  labels:  #! GAL3014
    version: v9
`))},
		{name: "unknown workloads", src: withBase(doc("DestinationRule", "payments", `
host: payments.billing.svc.cluster.local
subsets: [{name: v1, labels: {version: v1}}]
`))},
	},
}

// TestAnalyzers runs every case; each whole-set check has valid and
// invalid cases.
func TestAnalyzers(t *testing.T) {
	for _, group := range slices.Sorted(maps.Keys(cases)) {
		valid, invalid := 0, 0
		for _, c := range cases[group] {
			if len(galleytest.Expected(c.src)) == 0 {
				valid++
			} else {
				invalid++
			}
			t.Run(group+"/"+c.name, func(t *testing.T) { runCase(t, c) })
		}
		if valid == 0 || invalid == 0 {
			t.Errorf("%s: %d valid and %d invalid cases; want both", group, valid, invalid)
		}
	}
}

func runCase(t *testing.T, c acase) {
	t.Helper()
	res := decode.Decode("set.yaml", []byte(c.src))
	if len(res.Findings) > 0 || len(res.Rejected) > 0 {
		t.Fatalf("case does not decode cleanly:%s", galleytest.Describe(res.Findings))
	}
	// Cases are meant to be valid object by object; only errors would
	// blur what the analyzers are tested on.
	for _, f := range validate.Objects(res.Objects) {
		if f.Severity == api.SeverityError {
			t.Fatalf("case has a validation error: %s", f)
		}
	}
	fs := analyze.Analyze(res.Objects, c.opts)
	want, got := galleytest.Expected(c.src), galleytest.Got(fs)
	if !slices.Equal(want, got) {
		t.Errorf("findings differ\nwant %v\ngot  %v%s\nsource:%s", want, got, galleytest.Describe(fs), galleytest.Numbered(c.src))
	}
	for _, f := range fs {
		info, ok := api.LookupCode(f.Code)
		if !ok || info.Stage != "analyze" || f.Message == "" || f.Object == "" {
			t.Errorf("bad finding %+v", f)
		}
	}
}

// TestEveryAnalysisCodeIsTested makes sure no analysis code lacks a case.
func TestEveryAnalysisCodeIsTested(t *testing.T) {
	tested := map[api.Code]bool{}
	for _, group := range cases {
		for _, c := range group {
			for _, e := range galleytest.Expected(c.src) {
				code, _, _ := strings.Cut(e, "@")
				tested[api.Code(code)] = true
			}
		}
	}
	for _, ci := range api.Codes() {
		if ci.Stage == "analyze" && !tested[ci.Code] {
			t.Errorf("analysis code %s (%s) has no test case", ci.Code, ci.Title)
		}
	}
}

func TestEmptySet(t *testing.T) {
	if fs := analyze.Analyze(nil, analyze.Options{}); len(fs) != 0 {
		t.Fatalf("findings for an empty set: %v", fs)
	}
}
