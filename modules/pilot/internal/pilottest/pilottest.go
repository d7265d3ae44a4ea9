// Package pilottest has helpers shared by pilot's tests and benchmarks:
// building an index from Istio YAML the way the pilot module does, and
// proxies of each type.
package pilottest

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/registry"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// RootNamespace is the root namespace the helpers use, Istio's.
const RootNamespace = "istio-system"

// Snapshot decodes YAML into an accepted-config snapshot at revision rev,
// failing the test on decode errors.
func Snapshot(t testing.TB, rev uint64, yaml string) *galleyapi.Snapshot {
	t.Helper()
	r := decode.Decode("test.yaml", []byte(yaml))
	for _, f := range r.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Fatalf("decode: %v", f)
		}
	}
	return galleyapi.NewSnapshot(rev, r.Objects)
}

// Index builds an index from YAML: registry services from its
// ServiceEntries and WorkloadEntries, routing config from the rest.
func Index(t testing.TB, yaml string) *index.Index {
	t.Helper()
	return IndexOf(Snapshot(t, 1, yaml))
}

// IndexOf builds an index from a snapshot.
func IndexOf(snap *galleyapi.Snapshot) *index.Index {
	agg := registry.New(nil, nil)
	agg.SinkFor(registry.SourceConfig).Update(registry.State{Services: registry.BuildServices(snap, nil)})
	return index.New(core.DefaultMeshConfig(), RootNamespace, agg.View(), snap)
}

// Proxy returns a proxy of type typ in namespace ns with labels and a
// locality (region/zone/subzone, "" for none).
func Proxy(typ xdsapi.ProxyType, ns string, labels map[string]string, locality string) *xdsapi.Proxy {
	p := &xdsapi.Proxy{ID: string(typ) + "-test", Type: typ, Namespace: ns, Labels: labels, Node: &corev3.Node{Id: string(typ) + "-test"}}
	if typ == xdsapi.Sidecar || typ == xdsapi.Gateway {
		p.IP, p.IPs = "10.9.9.9", []string{"10.9.9.9"}
	}
	if locality != "" {
		parts := append(strings.SplitN(locality, "/", 3), "", "", "")
		p.Node.Locality = &corev3.Locality{Region: parts[0], Zone: parts[1], SubZone: parts[2]}
	}
	return p
}
