package generate

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	xdsapi "github.com/meshd/meshd/xds/api"
)

// delegateVS is a VirtualService ns/name without hosts (a delegate) with
// extra spec fields (exportTo, hosts) and HTTP routes http.
func delegateVS(ns, name, extra, http string) string {
	return fmt.Sprintf(`
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: %s}
spec:
%s  http:
%s
`, name, ns, extra, http)
}

// describeRoutes renders what a route matches and where it sends traffic,
// one line per route: name, path match, header matchers (! for inverted),
// query parameters, then the cluster, weighted clusters, or the redirect
// or direct response.
func describeRoutes(rs []*routev3.Route) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		var b strings.Builder
		b.WriteString(r.GetName())
		m := r.GetMatch()
		switch {
		case m.GetPath() != "":
			b.WriteString(" path=" + m.GetPath())
		case m.GetSafeRegex() != nil:
			b.WriteString(" regex=" + m.GetSafeRegex().GetRegex())
		default:
			b.WriteString(" prefix=" + m.GetPrefix())
		}
		for _, h := range m.GetHeaders() {
			inv := ""
			if h.GetInvertMatch() {
				inv = "!"
			}
			b.WriteString(" " + inv + h.GetName() + "=" + h.GetStringMatch().GetExact() + h.GetStringMatch().GetPrefix())
		}
		for _, q := range m.GetQueryParameters() {
			b.WriteString(" ?" + q.GetName() + "=" + q.GetStringMatch().GetExact())
		}
		switch {
		case r.GetRoute().GetCluster() != "":
			b.WriteString(" -> " + r.GetRoute().GetCluster())
		case r.GetRoute().GetWeightedClusters() != nil:
			for _, c := range r.GetRoute().GetWeightedClusters().GetClusters() {
				fmt.Fprintf(&b, " -> %s:%d", c.GetName(), c.GetWeight().GetValue())
			}
		case r.GetRedirect() != nil:
			b.WriteString(" redirect " + r.GetRedirect().GetPathRedirect())
		case r.GetDirectResponse() != nil:
			fmt.Fprintf(&b, " direct %d", r.GetDirectResponse().GetStatus())
		}
		out = append(out, b.String())
	}
	return out
}

const (
	v1 = "outbound|80|v1|" + aHost
	v2 = "outbound|80|v2|" + aHost
)

// TestDelegation checks Istio's delegation semantics on the routes a
// sidecar (and, where it matters, a proxyless client) gets for service a
// in namespace ns, whose VirtualService delegates.
func TestDelegation(t *testing.T) {
	tests := []struct {
		name   string
		config string // the root VirtualService (via vs) and its delegates
		typ    xdsapi.ProxyType
		labels map[string]string
		want   []string
	}{
		{
			name: "a delegate prefix within the root's narrows it",
			config: vs(`  - name: api
    match: [{uri: {prefix: /api}}]
    delegate: {name: d}
  - name: rest
    route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - name: v1
    match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: a, subset: v2}}]`),
			want: []string{"api-v1 prefix=/api/v1 -> " + v2, "rest prefix=/ -> " + v1},
		},
		{
			name: "a delegate prefix outside the root's is dropped, the rest of the delegate stays",
			config: vs(`  - match: [{uri: {prefix: /api}}]
    delegate: {name: d}`) + delegateVS("ns", "d", "", `  - name: outside
    match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: a, subset: v2}}]
  - name: inside
    match: [{uri: {exact: /api/health}}]
    route: [{destination: {host: a, subset: v1}}]`),
			want: []string{"inside path=/api/health -> " + v1},
		},
		{
			name: "one match outside the root drops the whole delegate route, as in Istio",
			config: vs(`  - match: [{uri: {prefix: /api}}]
    delegate: {name: d}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - match: [{uri: {prefix: /api/v1}}, {uri: {prefix: /admin}}]
    route: [{destination: {host: a, subset: v2}}]`),
			want: []string{" prefix=/ -> " + v1},
		},
		{
			name: "each delegate match pairs with every root match it fits",
			config: vs(`  - match: [{uri: {prefix: /api}}, {uri: {prefix: /v2}}, {headers: {x-team: {exact: a}}}]
    delegate: {name: d}`) + delegateVS("ns", "d", "", `  - match: [{uri: {prefix: /v2/items}}]
    route: [{destination: {host: a, subset: v2}}]`),
			// /api is dropped (not within it); the header-only root match
			// has no URI, so the delegate's URI applies under its header.
			want: []string{" prefix=/v2/items -> " + v2, " prefix=/v2/items x-team=a -> " + v2},
		},
		{
			name: "headers merge: both sets apply",
			config: vs(`  - match: [{uri: {prefix: /api}, headers: {x-team: {exact: a}}, withoutHeaders: {x-debug: {exact: "1"}}}]
    delegate: {name: d}`) + delegateVS("ns", "d", "", `  - match: [{headers: {x-user: {exact: b}}, queryParams: {v: {exact: "2"}}}]
    route: [{destination: {host: a, subset: v2}}]`),
			want: []string{" prefix=/api x-team=a x-user=b !x-debug=1 ?v=2 -> " + v2},
		},
		{
			name: "a header the delegate asks otherwise than the root conflicts",
			config: vs(`  - match: [{headers: {x-team: {exact: a}}}]
    delegate: {name: d}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - match: [{headers: {x-team: {exact: b}}}]
    route: [{destination: {host: a, subset: v2}}]
  - match: [{headers: {x-team: {exact: a}}, uri: {prefix: /x}}]
    route: [{destination: {host: a, subset: v2}}]`),
			want: []string{" prefix=/x x-team=a -> " + v2, " prefix=/ -> " + v1},
		},
		{
			name: "a delegate route without matches inherits the root's",
			config: vs(`  - name: root
    match: [{uri: {prefix: /api}}, {uri: {exact: /v2}}]
    delegate: {name: d}`) + delegateVS("ns", "d", "", `  - route: [{destination: {host: a, subset: v2}}]`),
			want: []string{"root prefix=/api -> " + v2, "root path=/v2 -> " + v2},
		},
		{
			name: "a root route without matches takes the delegate's as they are",
			config: vs(`  - delegate: {name: d}`) + delegateVS("ns", "d", "", `  - match: [{uri: {regex: "/a.*"}}]
    route: [{destination: {host: a, subset: v2}}]
  - route: [{destination: {host: a, subset: v1}}]`),
			want: []string{" regex=/a.* -> " + v2, " prefix=/ -> " + v1},
		},
		{
			name: "a regex on either side cannot be compared and conflicts",
			config: vs(`  - match: [{uri: {regex: "/api.*"}}]
    delegate: {name: d}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: a, subset: v2}}]`),
			want: []string{" prefix=/ -> " + v1},
		},
		{
			name: "routes keep their order around the delegated ones",
			config: vs(`  - name: first
    match: [{uri: {prefix: /first}}]
    route: [{destination: {host: a, subset: v1}}]
  - delegate: {name: d}
  - name: last
    route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - name: d1
    match: [{uri: {prefix: /d1}}]
    route: [{destination: {host: a, subset: v2}}]
  - name: d2
    match: [{uri: {prefix: /d2}}]
    route: [{destination: {host: a, subset: v2}}]`),
			want: []string{"first prefix=/first -> " + v1, "d1 prefix=/d1 -> " + v2, "d2 prefix=/d2 -> " + v2, "last prefix=/ -> " + v1},
		},
		{
			name: "a delegate in another namespace exported to the root's: short names are the delegate's",
			config: vs(`  - match: [{uri: {prefix: /api}}]
    delegate: {name: d, namespace: team}`) + delegateVS("team", "d", "  exportTo: [ns]\n", `  - match: [{uri: {prefix: /api/team}}]
    route: [{destination: {host: a}}]
  - route:
    - {destination: {host: a.ns.svc.cluster.local, subset: v1}, weight: 50}
    - {destination: {host: b}, weight: 50}`),
			want: []string{
				" prefix=/api/team -> outbound|80||a.team.svc.cluster.local",
				" prefix=/api -> " + v1 + ":50 -> outbound|80||b.team.svc.cluster.local:50",
			},
		},
		{
			name: "a delegate exported elsewhere is skipped",
			config: vs(`  - match: [{uri: {prefix: /api}}]
    delegate: {name: d, namespace: team}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("team", "d", "  exportTo: [other]\n", `  - route: [{destination: {host: a}}]`),
			want: []string{" prefix=/ -> " + v1},
		},
		{
			name: "a private delegate is skipped from another namespace",
			config: vs(`  - delegate: {name: d, namespace: team}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("team", "d", "  exportTo: [\".\"]\n", `  - route: [{destination: {host: a}}]`),
			want: []string{" prefix=/ -> " + v1},
		},
		{
			name:   "a private delegate serves its own namespace",
			config: vs(`  - delegate: {name: d}`) + delegateVS("ns", "d", "  exportTo: [\".\"]\n", `  - route: [{destination: {host: a, subset: v2}}]`),
			want:   []string{" prefix=/ -> " + v2},
		},
		{
			name: "a missing delegate yields nothing, the other routes stay",
			config: vs(`  - match: [{uri: {prefix: /api}}]
    delegate: {name: nowhere}
  - route: [{destination: {host: a, subset: v1}}]`),
			want: []string{" prefix=/ -> " + v1},
		},
		{
			name:   "a VirtualService whose only route delegates to nothing falls back to the default route",
			config: vs(`  - delegate: {name: nowhere, namespace: gone}`),
			want:   []string{"default prefix=/ -> outbound|80||" + aHost},
		},
		{
			name: "a VirtualService with hosts is no delegate",
			config: vs(`  - delegate: {name: d}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "  hosts: [d.example.com]\n", `  - route: [{destination: {host: a, subset: v2}}]`),
			want: []string{" prefix=/ -> " + v1},
		},
		{
			name: "one level only: a delegate's own delegate routes are ignored",
			config: vs(`  - delegate: {name: d}`) + delegateVS("ns", "d", "", `  - match: [{uri: {prefix: /deeper}}]
    delegate: {name: d2}
  - route: [{destination: {host: a, subset: v2}}]`) + delegateVS("ns", "d2", "", `  - route: [{destination: {host: a, subset: v1}}]`),
			want: []string{" prefix=/ -> " + v2},
		},
		{
			name: "sourceLabels of root and delegate both apply (this client has both)",
			config: vs(`  - match: [{sourceLabels: {app: me}}]
    delegate: {name: d}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - match: [{sourceLabels: {track: canary}, uri: {prefix: /c}}]
    route: [{destination: {host: a, subset: v2}}]`),
			labels: map[string]string{"app": "me", "track": "canary"},
			want:   []string{" prefix=/c -> " + v2, " prefix=/ -> " + v1},
		},
		{
			name: "sourceLabels of root and delegate both apply (this client lacks the delegate's)",
			config: vs(`  - match: [{sourceLabels: {app: me}}]
    delegate: {name: d}
  - route: [{destination: {host: a, subset: v1}}]`) + delegateVS("ns", "d", "", `  - match: [{sourceLabels: {track: canary}, uri: {prefix: /c}}]
    route: [{destination: {host: a, subset: v2}}]`),
			labels: map[string]string{"app": "me"},
			want:   []string{" prefix=/ -> " + v1},
		},
		{
			name: "proxyless clients get the same merged routes",
			config: vs(`  - name: api
    match: [{uri: {prefix: /pkg.}}]
    delegate: {name: d}`) + delegateVS("ns", "d", "", `  - name: svc
    match: [{uri: {prefix: /pkg.Service/}}]
    route: [{destination: {host: a, subset: v2}}]
  - route: [{destination: {host: a, subset: v1}}]`),
			typ:  xdsapi.Proxyless,
			want: []string{"api-svc prefix=/pkg.Service/ -> " + v2, "api prefix=/pkg. -> " + v1},
		},
	}
	dr := `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns}
spec:
  host: a
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
`
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ := tt.typ
			if typ == "" {
				typ = xdsapi.Sidecar
			}
			got := describeRoutes(routesFor(t, svcYAML(dr+tt.config), typ, tt.labels))
			if !slices.Equal(got, tt.want) {
				t.Errorf("routes:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

// TestDelegationInheritsRootFields checks that a delegate route takes the
// fields it leaves unset from its root route, as Istio's mergeHTTPRoute
// does, and keeps the ones it sets.
func TestDelegationInheritsRootFields(t *testing.T) {
	config := vs(`  - match: [{uri: {prefix: /api}}]
    timeout: 3s
    retries: {attempts: 4, retryOn: unavailable}
    headers: {request: {set: {x-root: "1"}}}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}
    mirror: {host: a, subset: v1}
    delegate: {name: d}`) + delegateVS("ns", "d", "", `  - name: inherits
    match: [{uri: {prefix: /api/a}}]
    route: [{destination: {host: a, subset: v2}}]
  - name: own
    timeout: 1s
    retries: {attempts: 1}
    headers: {request: {set: {x-own: "1"}}}
    route: [{destination: {host: a, subset: v2}}]`)
	rs := routesFor(t, svcYAML(config), xdsapi.Sidecar, nil)
	if len(rs) != 2 {
		t.Fatalf("routes: %v", describeRoutes(rs))
	}
	inherits, own := rs[0], rs[1]
	if d := inherits.GetRoute().GetTimeout().AsDuration().String(); d != "3s" {
		t.Errorf("inherited timeout %s, want the root's 3s", d)
	}
	if n := inherits.GetRoute().GetRetryPolicy().GetNumRetries().GetValue(); n != 4 {
		t.Errorf("inherited retries %d, want the root's 4", n)
	}
	if h := inherits.GetRequestHeadersToAdd(); len(h) != 1 || h[0].GetHeader().GetKey() != "x-root" {
		t.Errorf("inherited header operations %v, want the root's x-root", h)
	}
	if _, ok := inherits.GetTypedPerFilterConfig()[FilterFault]; !ok {
		t.Error("the root's fault is not inherited")
	}
	if m := inherits.GetRoute().GetRequestMirrorPolicies(); len(m) != 1 || m[0].GetCluster() != v1 {
		t.Errorf("inherited mirrors %v, want the root's to %s", m, v1)
	}
	if d := own.GetRoute().GetTimeout().AsDuration().String(); d != "1s" {
		t.Errorf("own timeout %s, want 1s", d)
	}
	if n := own.GetRoute().GetRetryPolicy().GetNumRetries().GetValue(); n != 1 {
		t.Errorf("own retries %d, want 1", n)
	}
	if h := own.GetRequestHeadersToAdd(); len(h) != 1 || h[0].GetHeader().GetKey() != "x-own" {
		t.Errorf("own header operations %v, want only x-own", h)
	}
	if own.GetMatch().GetPrefix() != "/api" {
		t.Errorf("a delegate route without matches must take the root's /api, got %v", own.GetMatch())
	}
}

// TestDelegateChangeChangesRoutes checks that routes follow the delegate:
// two indexes that differ only in the delegate VirtualService give
// different routes for the root's host, and the root's own spec is left
// as it was (the merge works on copies).
func TestDelegateChangeChangesRoutes(t *testing.T) {
	root := vs(`  - match: [{uri: {prefix: /api}}]
    delegate: {name: d}`)
	before := svcYAML(root + delegateVS("ns", "d", "", `  - match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: a, subset: v1}}]`))
	after := svcYAML(root + delegateVS("ns", "d", "", `  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: a, subset: v2}}]`))
	a := describeRoutes(routesFor(t, before, xdsapi.Proxyless, nil))
	b := describeRoutes(routesFor(t, after, xdsapi.Proxyless, nil))
	if want := []string{" prefix=/api/v1 -> " + v1}; !slices.Equal(a, want) {
		t.Fatalf("before: %v, want %v", a, want)
	}
	if want := []string{" prefix=/api/v2 -> " + v2}; !slices.Equal(b, want) {
		t.Fatalf("after the delegate changed: %v, want %v", b, want)
	}

	// Translating twice from one index gives the same routes and leaves
	// the specs untouched.
	ix := buildIndex(t, before)
	s := NewScope(ix, proxy(xdsapi.Sidecar, "ns", nil, ""), Envoy)
	svc := s.Service(aHost)
	first := describeRoutes(ServiceRoutes(s, svc, svc.Ports[0]))
	second := describeRoutes(ServiceRoutes(s, svc, svc.Ports[0]))
	if !slices.Equal(first, second) {
		t.Fatalf("second translation %v differs from the first %v", second, first)
	}
	rootVS := ix.VirtualServiceFor("ns", aHost)
	if rootVS.Spec.GetHttp()[0].GetDelegate() == nil || len(rootVS.Spec.GetHttp()) != 1 {
		t.Fatalf("the root VirtualService was modified: %v", rootVS.Spec)
	}
	if d := ix.Delegate("ns", "d", "ns"); d == nil || d.Spec.GetHttp()[0].GetMatch()[0].GetUri().GetPrefix() != "/api/v1" || d.Spec.GetHttp()[0].GetName() != "" {
		t.Fatalf("the delegate VirtualService was modified: %v", d)
	}
}
