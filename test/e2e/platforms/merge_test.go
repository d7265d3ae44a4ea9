package platforms

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshd/meshd/internal/testservers"
	"github.com/meshd/meshd/internal/testservers/kubetest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestMergedSources: one service (ratings.shop.svc.cluster.local) is known
// to a file (ServiceEntry), to Kubernetes and to Consul, each pointing at a
// different backend. pilot's aggregate serves the one with precedence
// (config, kubernetes, consul), /debug/registryz reports the conflict, and
// when the winner goes the next one takes over.
func TestMergedSources(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real kube-apiserver, Consul agent and a grpc-go client process")
	}
	c := kubetest.Start(t)
	c.Namespace("shop")
	agent := testservers.StartConsul(t)
	cc, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	fileB, kubeB, consulB := newBackend(t, "from-file"), newBackend(t, "from-kubernetes"), newBackend(t, "from-consul")

	kubeService(t, c, "shop", "ratings", 9090)
	kubeWorkload(t, c, "shop", "ratings", "ratings-1", "default", "v1", kubeB)
	register(t, cc, "ratings-1", "ratings", consulB, map[string]string{
		"protocol": "grpc", "meshd-port": "9090",
		"meshd-hostname": "ratings.shop.svc.cluster.local", "meshd-namespace": "shop",
	})
	dir := t.TempDir()
	seFile := filepath.Join(dir, "ratings.yaml")
	se := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 9090, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, ports: {grpc: %d}}]
`, fileB.port)
	if err := os.WriteFile(seFile, []byte(se), 0o600); err != nil {
		t.Fatal(err)
	}

	m := startMeshd(t, options{MeshDir: dir, Kubeconfig: c.Kubeconfig, ConsulAddr: agent.HTTPAddr, Registries: []string{"config", "kubernetes", "consul"}})
	cl := newClient(t, m.xds.Addr().String(), "shop")
	const target = "xds:///ratings.shop.svc.cluster.local:9090"
	const host = "ratings.shop.svc.cluster.local"

	conflict := func(winner string, losers ...string) func(registryz) bool {
		return func(r registryz) bool {
			for _, c := range r.Conflicts {
				if c.Hostname == host && c.Namespace == "shop" {
					return c.Winner == winner && slices.Equal(c.Losers, losers)
				}
			}
			return winner == "" // no conflict wanted
		}
	}

	r := m.waitRegistry(t, "config winning over kubernetes and consul", conflict("config", "kubernetes", "consul"))
	t.Logf("conflicts: %+v", r.Conflicts)
	cl.warm(t, target)
	cl.until(t, target, 20, 10*time.Second, "from-file")

	// The file goes: Kubernetes has precedence over Consul.
	if err := os.Remove(seFile); err != nil {
		t.Fatal(err)
	}
	m.waitRegistry(t, "kubernetes winning over consul", conflict("kubernetes", "consul"))
	cl.until(t, target, 20, 10*time.Second, "from-kubernetes")

	// The Kubernetes service goes too: Consul alone, no conflict.
	if err := c.Client.CoreV1().Services("shop").Delete(context.Background(), "ratings", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	m.waitRegistry(t, "consul alone", conflict(""))
	cl.until(t, target, 20, 10*time.Second, "from-consul")
}
