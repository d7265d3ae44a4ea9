package pilot

import (
	"bytes"
	"fmt"
	"testing"
	"text/template"
	"time"

	"google.golang.org/grpc/codes"
)

// failoverMesh is one service with an endpoint per rack and a
// DestinationRule that prefers endpoints on the client's rack.
// {{port "name"}} is a backend's port.
const failoverMesh = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: priority, namespace: shop}
spec:
  hosts: [priority.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  workloadSelector: {labels: {app: priority}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: priority-gold, namespace: shop}
spec:
  address: 127.0.0.1
  ports: {grpc: {{port "priority-gold"}}}
  labels: {app: priority, rack: gold}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: priority-silver, namespace: shop}
spec:
  address: 127.0.0.1
  ports: {grpc: {{port "priority-silver"}}}
  labels: {app: priority, rack: silver}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: priority, namespace: shop}
spec:
  host: priority
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 0.3s, baseEjectionTime: 30s, maxEjectionPercent: 100}
    loadBalancer: {localityLbSetting: {failoverPriority: [rack]}}
`

func renderFailoverMesh(t *testing.T, backends map[string]*backend) string {
	t.Helper()
	tpl := template.Must(template.New("mesh").Funcs(template.FuncMap{
		"port": func(name string) (uint32, error) {
			if b := backends[name]; b != nil {
				return b.port, nil
			}
			return 0, fmt.Errorf("no backend %q", name)
		},
	}).Parse(failoverMesh))
	var buf bytes.Buffer
	if err := tpl.Execute(&buf, nil); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestE2EFailoverPriority runs real grpc-go clients against a
// failoverPriority rule. Two clients that differ only in the label the
// rule names share one control plane, so each getting its own rack shows
// that per-proxy assignments are not shared between them; then the gold
// endpoint fails, outlier detection ejects it, and grpc-go fails over to
// the next priority.
func TestE2EFailoverPriority(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts grpc-go client processes")
	}
	backends := map[string]*backend{}
	for _, name := range []string{"priority-gold", "priority-silver"} {
		backends[name] = newBackend(t, name)
	}
	e := start(t, renderFailoverMesh(t, backends), nil)
	target := target("priority")
	clients := map[string]*client{}
	for _, rack := range []string{"gold", "silver"} {
		clients[rack] = newLabelledClient(t, e.XDSAddr(), "shop", rack, map[string]string{"app": "client", "rack": rack})
	}

	for rack, c := range clients {
		r := c.run(rpcBatch{Target: target, N: 1, WaitForReady: true, Timeout: 20 * time.Second})
		if r.Codes["OK"] != 1 {
			t.Fatalf("first RPC of the %s client: %v %s", rack, r.Codes, r.FirstErr)
		}
		r = c.run(rpcBatch{Target: target, N: 200, Concurrency: 8})
		if r.Codes["OK"] != 200 || r.Backends["priority-"+rack] != 200 {
			t.Fatalf("%s client: %v %v (%s), want all 200 on priority-%s", rack, r.Codes, r.Backends, r.FirstErr, rack)
		}
	}

	gold := backends["priority-gold"]
	gold.failCode.Store(uint32(codes.Unavailable))
	// Until the ejection RPCs fail; keep sending until a whole batch
	// succeeds, within a bound.
	deadline := time.Now().Add(10 * time.Second)
	failedBefore := 0
	for {
		r := clients["gold"].run(rpcBatch{Target: target, N: 40, Concurrency: 4})
		failedBefore += r.Codes["Unavailable"]
		if r.Codes["OK"] == 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gold client still failing after 10s: %v (%s)", r.Codes, r.FirstErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if failedBefore == 0 {
		t.Fatal("the failing gold endpoint never received traffic, so failover was not shown")
	}
	calls := gold.calls.Load()
	r := clients["gold"].run(rpcBatch{Target: target, N: 300, Concurrency: 16})
	if r.Codes["OK"] != 300 || r.Backends["priority-silver"] != 300 || gold.calls.Load() != calls {
		t.Fatalf("after ejection: %v %v, gold backend calls %d -> %d", r.Codes, r.Backends, calls, gold.calls.Load())
	}
	t.Logf("%d RPCs failed before gold was ejected and the gold client failed over to silver", failedBefore)

	// The silver client never noticed.
	r = clients["silver"].run(rpcBatch{Target: target, N: 100, Concurrency: 8})
	if r.Codes["OK"] != 100 || r.Backends["priority-silver"] != 100 {
		t.Fatalf("silver client after gold failed: %v %v", r.Codes, r.Backends)
	}
	for _, st := range e.xds.Statuses() {
		for _, ts := range st.Types {
			if ts.LastNack != nil {
				t.Errorf("%s NACKed %s: %s", st.ID, ts.TypeURL, ts.LastNack.Message)
			}
		}
	}
}
