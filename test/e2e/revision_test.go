package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/xds/api"
)

// revisionMesh is one service with two versions; the VirtualService sends
// everything to subset.
func revisionMesh(b1, b2, subset string) string {
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: shop}
spec: {address: 127.0.0.1, ports: {grpc: %s}, labels: {app: echo, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v2, namespace: shop}
spec: {address: 127.0.0.1, ports: {grpc: %s}, labels: {app: echo, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: shop}
spec:
  host: echo.shop.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  http:
  - route: [{destination: {host: echo.shop.svc.cluster.local, subset: %s}}]
`, port(b1), port(b2), subset)
}

// TestConfigRevisionReachesProxy applies a config change to a running
// `meshd serve` through its galley files, waits until a real grpc-go xDS
// client routes by it, and checks that `meshd status` and `meshd config
// history` say the client runs galley's latest accepted revision.
func TestConfigRevisionReachesProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd and a grpc-go client")
	}
	b1, b2 := echoBackend(t, "b1"), echoBackend(t, "b2")
	dir := t.TempDir()
	meshDir := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(meshDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeMesh := func(subset string) {
		t.Helper()
		path := filepath.Join(meshDir, "echo.yaml")
		if err := os.WriteFile(path+".tmp", []byte(revisionMesh(b1, b2, subset)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	writeMesh("v1")
	s := Start(t, Options{Dir: dir, Config: `modules:
  galley:
    paths: [./mesh]
    debounce: 20ms
  xds:
    debounce: {quiet: 10ms, max: 100ms}
`})
	s.WaitReady(t, 60*time.Second)

	const target = "xds:///echo.shop.svc.cluster.local:7000"
	child := newXDSChild(t, s.XDS)
	if a := child.call(t, target); a.Backend != "b1" {
		t.Fatalf("RPC before the change: %+v", a)
	}
	first := currentRevision(t, s)

	writeMesh("v2")
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := child.call(t, target)
		if a.Backend == "b2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client still routes to %+v 10s after the change", a)
		}
		time.Sleep(50 * time.Millisecond)
	}
	latest := currentRevision(t, s)
	if latest <= first {
		t.Fatalf("galley's revision went %d -> %d; the change was not accepted as a new revision", first, latest)
	}

	// The client took the change: it acknowledged galley's revision for
	// every type (grpc-go ACKs right after applying, so allow a moment).
	var mine []api.ProxyStatus
	deadline = time.Now().Add(5 * time.Second)
	for {
		out, code := Run(t, dir, nil, "status", "--admin", s.Admin, "-o", "json")
		if code != 0 {
			t.Fatalf("meshd status -o json: exit %d\n%s", code, out)
		}
		var all []api.ProxyStatus
		if err := json.Unmarshal([]byte(out), &all); err != nil {
			t.Fatalf("meshd status -o json: %v\n%s", err, out)
		}
		mine = mine[:0]
		onLatest := true
		for _, st := range all {
			if !strings.HasPrefix(st.ID, "plugins-e2e-") {
				continue
			}
			mine = append(mine, st)
			for _, ts := range st.Types {
				onLatest = onLatest && ts.RevisionAcked == latest
			}
		}
		if len(mine) > 0 && onLatest {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client's streams do not all acknowledge revision %d:\n%s", latest, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, st := range mine {
		if low, high := st.ConfigRevision(); low != latest || high != latest {
			t.Errorf("stream %s runs revisions %d..%d, want %d", st.ConnID, low, high, latest)
		}
	}

	out, code := Run(t, dir, nil, "status", "--admin", s.Admin)
	if want := fmt.Sprintf("1 proxy, 1 on the latest revision %d, 0 behind, 0 NACKed", latest); code != 0 || !strings.Contains(out, want) {
		t.Errorf("meshd status (exit %d) lacks %q:\n%s", code, want, out)
	}

	// meshd config history counts the client on the latest revision, and
	// on no other.
	out, code = Run(t, dir, nil, "config", "history", "--admin", s.Admin)
	if code != 0 {
		t.Fatalf("meshd config history: exit %d\n%s", code, out)
	}
	proxies := map[uint64]string{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 {
			if len(f) < 2 || f[0] != "REVISION" || f[1] != "PROXIES" {
				t.Fatalf("meshd config history has no PROXIES column:\n%s", out)
			}
			continue
		}
		var rev uint64
		if _, err := fmt.Sscan(f[0], &rev); err != nil {
			t.Fatalf("history line %q: %v", line, err)
		}
		col := 1
		if f[1] == "*" {
			col = 2
		}
		proxies[rev] = f[col]
	}
	for rev, n := range proxies {
		want := "0"
		if rev == latest {
			want = "1"
		}
		if n != want {
			t.Errorf("history says %s proxies on revision %d, want %s:\n%s", n, rev, want, out)
		}
	}
	if _, ok := proxies[latest]; !ok {
		t.Errorf("history does not list revision %d:\n%s", latest, out)
	}
	t.Logf("meshd config history:\n%s", out)
}

// currentRevision is galley's accepted revision, from meshd config history.
func currentRevision(t *testing.T, s *Server) uint64 {
	t.Helper()
	out, code := Run(t, s.Dir, nil, "config", "history", "--admin", s.Admin, "-o", "json")
	if code != 0 {
		t.Fatalf("meshd config history -o json: exit %d\n%s", code, out)
	}
	var list struct {
		Current   uint64 `json:"current"`
		Revisions []struct {
			Revision uint64 `json:"revision"`
			Proxies  *int   `json:"proxies"`
		} `json:"revisions"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("meshd config history -o json: %v\n%s", err, out)
	}
	if len(list.Revisions) == 0 || list.Revisions[0].Proxies == nil {
		t.Fatalf("meshd config history -o json lacks proxy counts:\n%s", out)
	}
	return list.Current
}
