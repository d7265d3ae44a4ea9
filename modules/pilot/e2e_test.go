package pilot

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	"google.golang.org/grpc/codes"
)

// The end-to-end test: meshd's xds and pilot modules in one host, config
// from Istio YAML (ServiceEntries selecting WorkloadEntries on 127.0.0.1),
// real grpc-go backends, and a real grpc-go client in a child process
// dialing xds:///<host>:<port>. Every assertion is on RPC outcomes.

// e2eMesh is the mesh, one service per behaviour under test so they can
// share one control plane and one client. {{port "name"}} is a backend's
// port.
const e2eMesh = `
{{define "service"}}
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: {{.}}, namespace: shop}
spec:
  hosts: [{{.}}.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  workloadSelector: {labels: {app: {{.}}}}
---
{{end}}
{{define "workload"}}
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: {{index . 0}}, namespace: shop}
spec:
  address: 127.0.0.1
  ports: {grpc: {{port (index . 0)}}}
  labels: {app: {{index . 1}}, version: {{index . 2}}}
---
{{end}}

{{template "service" "split"}}
{{template "workload" (list "split-v1" "split" "v1")}}
{{template "workload" (list "split-v2" "split" "v2")}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: split, namespace: shop}
spec:
  host: split
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split, namespace: shop}
spec:
  hosts: [split]
  http:
  - route:
    - {destination: {host: split, subset: v1}, weight: {{.SplitV1}}}
    - {destination: {host: split, subset: v2}, weight: {{.SplitV2}}}
---
{{template "service" "match"}}
{{template "workload" (list "match-main" "match" "main")}}
{{template "workload" (list "match-canary" "match" "canary")}}
{{template "workload" (list "match-other" "match" "other")}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: match, namespace: shop}
spec:
  host: match
  subsets:
  - {name: main, labels: {version: main}}
  - {name: canary, labels: {version: canary}}
  - {name: other, labels: {version: other}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: match, namespace: shop}
spec:
  hosts: [match]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: match, subset: canary}}]
  - match: [{uri: {prefix: /meshd.test.Echo/Oth}}]
    route: [{destination: {host: match, subset: other}}]
  - route: [{destination: {host: match, subset: main}}]
---
{{template "service" "retry"}}
{{template "workload" (list "retry-1" "retry" "v1")}}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: retry, namespace: shop}
spec:
  hosts: [retry]
  http:
  - match: [{headers: {x-no-retry: {exact: "1"}}}]
    route: [{destination: {host: retry}}]
  - retries: {attempts: 3, retryOn: unavailable}
    route: [{destination: {host: retry}}]
---
{{template "service" "slow"}}
{{template "workload" (list "slow-1" "slow" "v1")}}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: shop}
spec:
  hosts: [slow]
  http:
  - timeout: 0.2s
    route: [{destination: {host: slow}}]
---
{{template "service" "fault"}}
{{template "workload" (list "fault-1" "fault" "v1")}}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: fault, namespace: shop}
spec:
  hosts: [fault]
  http:
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 30}}}
    route: [{destination: {host: fault}}]
  - match: [{headers: {x-fault: {exact: delay}}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 50}}}
    route: [{destination: {host: fault}}]
  - route: [{destination: {host: fault}}]
---
{{template "service" "outlier"}}
{{template "workload" (list "outlier-good" "outlier" "v1")}}
{{template "workload" (list "outlier-bad" "outlier" "v1")}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier, namespace: shop}
spec:
  host: outlier
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 0.3s, baseEjectionTime: 30s, maxEjectionPercent: 50}
---
{{template "service" "sticky"}}
{{template "workload" (list "sticky-1" "sticky" "v1")}}
{{template "workload" (list "sticky-2" "sticky" "v1")}}
{{template "workload" (list "sticky-3" "sticky" "v1")}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: shop}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
---
{{template "service" "deleg"}}
{{template "workload" (list "deleg-api" "deleg" "api")}}
{{template "workload" (list "deleg-echo" "deleg" "echo")}}
{{template "workload" (list "deleg-other" "deleg" "other")}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: deleg, namespace: shop}
spec:
  host: deleg
  subsets:
  - {name: api, labels: {version: api}}
  - {name: echo, labels: {version: echo}}
  - {name: other, labels: {version: other}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: deleg, namespace: shop}
spec:
  hosts: [deleg]
  http:
  - match: [{uri: {prefix: /meshd.test.Echo/}}]
    delegate: {name: deleg-routes, namespace: team}
  - route: [{destination: {host: deleg, subset: other}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: deleg-routes, namespace: team}
spec:
  exportTo: [shop]
  http:
  - match: [{uri: {prefix: {{.DelegPrefix}}}}]
    route: [{destination: {host: deleg.shop.svc.cluster.local, subset: api}}]
  - match: [{uri: {prefix: /meshd.test.Admin/}}]
    route: [{destination: {host: deleg.shop.svc.cluster.local, subset: api}}]
  - route: [{destination: {host: deleg.shop.svc.cluster.local, subset: echo}}]
---
{{template "service" "shrink"}}
{{template "workload" (list "shrink-1" "shrink" "v1")}}
{{if .ShrinkBoth}}{{template "workload" (list "shrink-2" "shrink" "v1")}}{{end}}
{{template "service" "empty"}}
`

// e2eVars are the knobs the test turns between config revisions.
type e2eVars struct {
	SplitV1, SplitV2 int
	ShrinkBoth       bool
	// DelegPrefix is the path prefix the delegate VirtualService sends to
	// deleg-api.
	DelegPrefix string
}

func renderMesh(t *testing.T, backends map[string]*backend, v e2eVars) string {
	t.Helper()
	tpl := template.Must(template.New("mesh").Funcs(template.FuncMap{
		"port": func(name string) (uint32, error) {
			b := backends[name]
			if b == nil {
				return 0, fmt.Errorf("no backend %q", name)
			}
			return b.port, nil
		},
		"list": func(s ...string) []string { return s },
	}).Parse(e2eMesh))
	var buf bytes.Buffer
	if err := tpl.Execute(&buf, v); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func target(svc string) string { return "xds:///" + svc + ".shop.svc.cluster.local:7000" }

// TestE2EGRPC drives real grpc-go traffic through everything pilot
// translates. Each subtest states the outcome it asserts.
func TestE2EGRPC(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts a grpc-go client process")
	}
	backends := map[string]*backend{}
	for _, name := range []string{
		"split-v1", "split-v2", "match-main", "match-canary", "match-other", "retry-1", "slow-1", "fault-1",
		"outlier-good", "outlier-bad", "sticky-1", "sticky-2", "sticky-3", "shrink-1", "shrink-2",
		"deleg-api", "deleg-echo", "deleg-other",
	} {
		backends[name] = newBackend(t, name)
	}
	vars := e2eVars{SplitV1: 80, SplitV2: 20, ShrinkBoth: true, DelegPrefix: "/meshd.test.Echo/Oth"}
	e := start(t, renderMesh(t, backends, vars), nil)
	c := newClient(t, e.XDSAddr(), "shop")

	// warm opens a channel and waits until it routes.
	warm := func(t *testing.T, svc string) {
		t.Helper()
		r := c.run(rpcBatch{Target: target(svc), N: 1, WaitForReady: true, Timeout: 20 * time.Second})
		if r.Codes["OK"] != 1 && svc != "empty" {
			t.Fatalf("first RPC to %s: %v %s", svc, r.Codes, r.FirstErr)
		}
	}

	t.Run("weighted split 80/20 within 5 points over 2000 RPCs", func(t *testing.T) {
		warm(t, "split")
		r := c.run(rpcBatch{Target: target("split"), N: 2000, Concurrency: 32})
		if r.Codes["OK"] != 2000 {
			t.Fatalf("codes %v (%s)", r.Codes, r.FirstErr)
		}
		if v1 := r.share("split-v1"); math.Abs(v1-0.80) > 0.05 {
			t.Fatalf("v1 got %.1f%% of 2000 RPCs, want 80±5%% (%v)", 100*v1, r.Backends)
		}
		t.Logf("split: %v", r.Backends)
	})

	t.Run("header match and path prefix route to their subsets", func(t *testing.T) {
		warm(t, "match")
		for _, tc := range []struct {
			name    string
			b       rpcBatch
			backend string
		}{
			{"no match", rpcBatch{Method: methodCall}, "match-main"},
			{"header x-canary: yes", rpcBatch{Method: methodCall, Headers: map[string]string{"x-canary": "yes"}}, "match-canary"},
			{"header x-canary: no", rpcBatch{Method: methodCall, Headers: map[string]string{"x-canary": "no"}}, "match-main"},
			{"path prefix /meshd.test.Echo/Oth", rpcBatch{Method: methodOther}, "match-other"},
			{"header beats path (first route wins)", rpcBatch{Method: methodOther, Headers: map[string]string{"x-canary": "yes"}}, "match-canary"},
		} {
			b := tc.b
			b.Target, b.N = target("match"), 50
			r := c.run(b)
			if r.Backends[tc.backend] != 50 {
				t.Errorf("%s: %v %v (%s), want all 50 on %s", tc.name, r.Backends, r.Codes, r.FirstErr, tc.backend)
			}
		}
	})

	// The root VirtualService hands /meshd.test.Echo/ to a delegate in
	// another namespace; the delegate's /meshd.test.Admin/ route lies
	// outside that and is dropped, so Admin calls take the root's fallback.
	t.Run("a delegate VirtualService routes the root's path prefix and an edit to it alone takes effect", func(t *testing.T) {
		warm(t, "deleg")
		const methodAdmin = "/meshd.test.Admin/Call"
		check := func(t *testing.T, want map[string]string) {
			t.Helper()
			for _, method := range []string{methodCall, methodOther, methodAdmin} {
				r := c.run(rpcBatch{Target: target("deleg"), Method: method, N: 50})
				if r.Backends[want[method]] != 50 {
					t.Errorf("%s: %v %v (%s), want all 50 on %s", method, r.Backends, r.Codes, r.FirstErr, want[method])
				}
			}
		}
		check(t, map[string]string{methodOther: "deleg-api", methodCall: "deleg-echo", methodAdmin: "deleg-other"})

		start := time.Now()
		vars.DelegPrefix = "/meshd.test.Echo/Call"
		e.galley.apply(t, renderMesh(t, backends, vars))
		waitFor(t, time.Second, "the delegate's new prefix", func() error {
			if r := c.run(rpcBatch{Target: target("deleg"), Method: methodCall, N: 5}); r.Backends["deleg-api"] != 5 {
				return errNotYet
			}
			return nil
		})
		t.Logf("delegate edit in effect after %v", time.Since(start).Round(time.Millisecond))
		check(t, map[string]string{methodCall: "deleg-api", methodOther: "deleg-echo", methodAdmin: "deleg-other"})
	})

	t.Run("retries succeed past a backend that fails its first two attempts", func(t *testing.T) {
		warm(t, "retry")
		b := backends["retry-1"]
		b.failFirst.Store(2)
		defer b.failFirst.Store(0)
		r := c.run(rpcBatch{Target: target("retry"), N: 50, SeqHeader: "x-request-id"})
		if r.Codes["OK"] != 50 {
			t.Fatalf("with retries: %v (%s), want 50 OK", r.Codes, r.FirstErr)
		}
		counts := b.attemptCounts()
		if len(counts) != 50 || counts[0] != 3 || counts[len(counts)-1] != 3 {
			t.Fatalf("attempts per request: %v, want 3 each (2 failures, then success)", counts)
		}
		// The same backend without the route's retries: every RPC fails.
		r = c.run(rpcBatch{Target: target("retry"), N: 20, SeqHeader: "x-request-id", Headers: map[string]string{"x-no-retry": "1"}})
		if r.Codes["Unavailable"] != 20 {
			t.Fatalf("without retries: %v, want 20 Unavailable", r.Codes)
		}
	})

	t.Run("route timeout of 0.2s cuts a 2s backend", func(t *testing.T) {
		warm(t, "slow")
		backends["slow-1"].delay.Store(int64(2 * time.Second))
		defer backends["slow-1"].delay.Store(0)
		r := c.run(rpcBatch{Target: target("slow"), N: 10, Timeout: 10 * time.Second})
		if r.Codes["DeadlineExceeded"] != 10 {
			t.Fatalf("codes %v, want 10 DeadlineExceeded", r.Codes)
		}
		for _, ms := range r.Millis {
			if ms < 150 || ms > 1000 {
				t.Fatalf("an RPC took %.0f ms; the route timeout is 200 ms", ms)
			}
		}
	})

	t.Run("fault abort at 30 percent", func(t *testing.T) {
		warm(t, "fault")
		const n = 2000
		r := c.run(rpcBatch{Target: target("fault"), N: n, Concurrency: 32, Headers: map[string]string{"x-fault": "abort"}})
		got := float64(r.Codes["Unavailable"]) / n
		if math.Abs(got-0.30) > 0.04 || r.Codes["OK"]+r.Codes["Unavailable"] != n {
			t.Fatalf("aborted %.1f%% (%v), want 30±4%%", 100*got, r.Codes)
		}
		if !strings.Contains(r.FirstErr, "fault injection") {
			t.Fatalf("abort error %q does not come from fault injection", r.FirstErr)
		}
	})

	// The delay is long next to scheduling noise on a busy machine: an RPC
	// counts as delayed when it took 0.8s or more.
	t.Run("fault delay of 1s at 50 percent", func(t *testing.T) {
		const n = 400
		r := c.run(rpcBatch{Target: target("fault"), N: n, Concurrency: n, Headers: map[string]string{"x-fault": "delay"}})
		if r.Codes["OK"] != n {
			t.Fatalf("codes %v", r.Codes)
		}
		delayed := 0
		for _, ms := range r.Millis {
			if ms >= 800 {
				delayed++
			}
		}
		if got := float64(delayed) / n; math.Abs(got-0.5) > 0.08 {
			t.Fatalf("%d of %d RPCs delayed (%.1f%%), want 50±8%%", delayed, n, 100*got)
		}
		// Without the header nothing is delayed.
		r = c.run(rpcBatch{Target: target("fault"), N: 100, Concurrency: 20})
		if slices.Max(r.Millis) >= 800 {
			t.Fatalf("an RPC without the fault header took %.0f ms", slices.Max(r.Millis))
		}
	})

	t.Run("outlier detection ejects a failing endpoint", func(t *testing.T) {
		warm(t, "outlier")
		backends["outlier-bad"].failCode.Store(uint32(codes.Unavailable))
		// Before ejection about half the RPCs fail; keep sending until a
		// whole batch succeeds, within a bound.
		deadline := time.Now().Add(10 * time.Second)
		failedBefore := 0
		for {
			r := c.run(rpcBatch{Target: target("outlier"), N: 40, Concurrency: 4})
			failedBefore += r.Codes["Unavailable"]
			if r.Codes["OK"] == 40 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still failing after 10s: %v", r.Codes)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if failedBefore == 0 {
			t.Fatal("the failing endpoint never received traffic, so ejection was not shown")
		}
		bad := backends["outlier-bad"].calls.Load()
		r := c.run(rpcBatch{Target: target("outlier"), N: 300, Concurrency: 16})
		if r.Codes["OK"] != 300 || r.Backends["outlier-good"] != 300 || backends["outlier-bad"].calls.Load() != bad {
			t.Fatalf("after ejection: %v %v, bad backend calls %d -> %d", r.Codes, r.Backends, bad, backends["outlier-bad"].calls.Load())
		}
		t.Logf("%d RPCs failed before the bad endpoint was ejected", failedBefore)
	})

	t.Run("ring hash keeps each x-user on one backend", func(t *testing.T) {
		warm(t, "sticky")
		used := map[string]bool{}
		for u := range 24 {
			r := c.run(rpcBatch{Target: target("sticky"), N: 20, Concurrency: 4, Headers: map[string]string{"x-user": fmt.Sprintf("user-%d", u)}})
			if len(r.Backends) != 1 || r.Codes["OK"] != 20 {
				t.Fatalf("user-%d spread over %v (%v)", u, r.Backends, r.Codes)
			}
			for b := range r.Backends {
				used[b] = true
			}
		}
		if len(used) < 2 {
			t.Fatalf("24 users all hashed to %v; the hash does not spread", used)
		}
	})

	t.Run("a removed endpoint receives no more traffic, by an EDS-only push", func(t *testing.T) {
		warm(t, "shrink")
		// Balancers pick only connected endpoints, and the second one's
		// connection may still be coming up: wait until both serve.
		waitFor(t, 2*time.Second, "both shrink endpoints serving", func() error {
			if r := c.run(rpcBatch{Target: target("shrink"), N: 100}); r.Backends["shrink-1"] == 0 || r.Backends["shrink-2"] == 0 {
				return errNotYet
			}
			return nil
		})
		full, eds := pushes(t, e, "full"), pushes(t, e, "eds")
		vars.ShrinkBoth = false
		e.galley.apply(t, renderMesh(t, backends, vars))
		waitFor(t, 2*time.Second, "shrink-2 drained", func() error {
			if r := c.run(rpcBatch{Target: target("shrink"), N: 20}); r.Backends["shrink-2"] > 0 {
				return errNotYet
			}
			return nil
		})
		before := backends["shrink-2"].calls.Load()
		r := c.run(rpcBatch{Target: target("shrink"), N: 300})
		if r.Backends["shrink-1"] != 300 || backends["shrink-2"].calls.Load() != before {
			t.Fatalf("after removal: %v, removed backend calls %d -> %d", r.Backends, before, backends["shrink-2"].calls.Load())
		}
		if pushes(t, e, "full") != full || pushes(t, e, "eds") <= eds {
			t.Fatalf("removing an endpoint took full pushes %d -> %d, eds %d -> %d; want EDS only", full, pushes(t, e, "full"), eds, pushes(t, e, "eds"))
		}
	})

	t.Run("a weight change reaches the running client", func(t *testing.T) {
		start := time.Now()
		vars.SplitV1, vars.SplitV2 = 20, 80
		e.galley.apply(t, renderMesh(t, backends, vars))
		waitFor(t, 2*time.Second, "the new split", func() error {
			if r := c.run(rpcBatch{Target: target("split"), N: 50, Concurrency: 16}); r.share("split-v2") < 0.5 {
				return errNotYet
			}
			return nil
		})
		t.Logf("new weights in effect after %v", time.Since(start).Round(time.Millisecond))
		r := c.run(rpcBatch{Target: target("split"), N: 2000, Concurrency: 32})
		if v2 := r.share("split-v2"); math.Abs(v2-0.80) > 0.05 {
			t.Fatalf("v2 got %.1f%%, want 80±5%% (%v)", 100*v2, r.Backends)
		}
	})

	t.Run("a service without endpoints is a valid empty cluster", func(t *testing.T) {
		r := c.run(rpcBatch{Target: target("empty"), N: 5, Timeout: 2 * time.Second})
		if r.Codes["Unavailable"] != 5 {
			t.Fatalf("codes %v (%s), want Unavailable (no healthy upstream)", r.Codes, r.FirstErr)
		}
		// The client accepted everything meshd sent it: no NACK on any stream.
		for _, st := range e.xds.Statuses() {
			for _, ts := range st.Types {
				if ts.LastNack != nil {
					t.Errorf("%s NACKed %s: %s", st.ID, ts.TypeURL, ts.LastNack.Message)
				}
			}
		}
	})
}
