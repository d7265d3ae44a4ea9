package index

import (
	"slices"
	"testing"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
)

func TestSourceSelectorsAndLocality(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		selectors int
		locality  bool
	}{
		{name: "none", yaml: config, selectors: 0, locality: false},
		{name: "source labels deduplicated", yaml: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: shop}
spec:
  hosts: [a]
  http:
  - match: [{sourceLabels: {app: x}}, {sourceLabels: {app: y}}]
    route: [{destination: {host: a}}]
  - match: [{sourceLabels: {app: x}}]
    route: [{destination: {host: a}}]
`, selectors: 2},
		{name: "outlier detection in a subset", yaml: `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: shop}
spec:
  host: a
  subsets:
  - name: v1
    labels: {v: "1"}
    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}
`, locality: true},
		{name: "locality setting at port level", yaml: `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: shop}
spec:
  host: a
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {localityLbSetting: {enabled: true}}
`, locality: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := decode.Decode("t.yaml", []byte(tt.yaml))
			for _, f := range r.Findings {
				if f.Severity == galleyapi.SeverityError {
					t.Fatalf("decode: %v", f)
				}
			}
			ix := New(core.DefaultMeshConfig(), "istio-system", nil, galleyapi.NewSnapshot(1, r.Objects))
			if got := len(ix.SourceSelectors()); got != tt.selectors {
				t.Errorf("SourceSelectors: %d, want %d", got, tt.selectors)
			}
			if got := ix.LocalitySensitive(); got != tt.locality {
				t.Errorf("LocalitySensitive: %v, want %v", got, tt.locality)
			}
		})
	}
}

func TestSubsetNames(t *testing.T) {
	r := decode.Decode("t.yaml", []byte(config+`
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-wide, namespace: other}
spec:
  host: "*.shop.svc.cluster.local"
  subsets: [{name: v1, labels: {version: v1}}, {name: canary, labels: {track: canary}}]
`))
	ix := New(core.DefaultMeshConfig(), "meshd-system", nil, galleyapi.NewSnapshot(1, r.Objects))
	got := ix.SubsetNames("reviews.shop.svc.cluster.local")
	if want := []string{"canary", "v1"}; !slices.Equal(got, want) {
		t.Fatalf("SubsetNames = %v, want %v", got, want)
	}
	if got := ix.SubsetNames("api.example.com"); len(got) != 0 {
		t.Fatalf("SubsetNames(api.example.com) = %v", got)
	}
}

// TestMeshVirtualServicesLookup checks the host lookup against a scan of
// every VirtualService.
func TestMeshVirtualServicesLookup(t *testing.T) {
	ix := build(t)
	for _, ns := range []string{"shop", "other"} {
		for _, host := range []string{"reviews.shop.svc.cluster.local", "shop.example.com", "x.shop.svc.cluster.local", "api.example.com", "nothing"} {
			var want []string
			for _, vs := range ix.meshVS {
				if !exportedTo(vs.Spec.GetExportTo(), vs.Namespace(), ns) {
					continue
				}
				for _, h := range vs.Hosts {
					if HostMatches(h, host) {
						want = append(want, vs.Object.Name)
						break
					}
				}
			}
			var got []string
			for _, vs := range ix.MeshVirtualServices(ns, host) {
				got = append(got, vs.Object.Name)
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("MeshVirtualServices(%s, %s) = %v, want %v", ns, host, got, want)
			}
		}
	}
}

// TestFailoverPriorityLabels checks which labels generator keys must
// read: every failoverPriority label at any level, once, except those
// with a fixed value.
func TestFailoverPriorityLabels(t *testing.T) {
	r := decode.Decode("t.yaml", []byte(`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: shop}
spec:
  host: a
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3}
    loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network, version]}}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {localityLbSetting: {failoverPriority: [rack]}}
  subsets:
  - name: v1
    labels: {v: "1"}
    trafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: [version, "team=a"]}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: shop}
spec:
  host: b
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}
`))
	for _, f := range r.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Fatalf("decode: %v", f)
		}
	}
	ix := New(core.DefaultMeshConfig(), "istio-system", nil, galleyapi.NewSnapshot(1, r.Objects))
	want := []string{"topology.istio.io/network", "version", "rack"}
	if got := ix.FailoverPriorityLabels(); !slices.Equal(got, want) {
		t.Errorf("FailoverPriorityLabels %q, want %q", got, want)
	}
}
