package consul

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshd/meshd/internal/testservers"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// TestRealConsulAgent runs the source against a real Consul agent: it
// registers services with health checks, flips checks, deregisters, and
// counts the requests meshd makes while Consul is idle.
func TestRealConsulAgent(t *testing.T) {
	agent := testservers.StartConsul(t)
	client, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	register := func(id, addr string, port int, tags []string, meta map[string]string) {
		t.Helper()
		err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: "orders", Address: addr, Port: port, Tags: tags, Meta: meta,
			Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "10m", Status: api.HealthPassing},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	register("orders-1", "127.0.0.1", 9001, []string{"v1", "track=stable"}, map[string]string{"protocol": "grpc"})
	register("orders-2", "127.0.0.2", 9001, []string{"v2"}, map[string]string{"protocol": "grpc"})

	// Count what meshd asks Consul through a proxy.
	var requests atomic.Int64
	target, _ := url.Parse("http://" + agent.HTTPAddr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	defer counting.Close()

	cfg := Default()
	cfg.Address = counting.URL
	cfg.MinInterval = 50 * time.Millisecond
	src, snk, stop := startSource(t, cfg)
	defer stop()

	const host = "orders.service.consul"
	st := snk.waitFor(t, 10*time.Second, "both instances healthy", func(st registry.State) bool {
		return len(healthyAddrs(find(st, host))) == 2
	})
	if find(st, "consul.service.consul") != nil {
		t.Errorf("the consul service itself is discovered; excludeServices should drop it")
	}
	svc := find(st, host)
	if svc.Ports[0].Protocol != model.ProtocolGRPC || svc.Ports[0].Number != 9001 {
		t.Errorf("port = %+v", svc.Ports[0])
	}
	e := svc.Endpoints[0]
	if e.Locality.Region != agent.Datacenter || e.Labels["track"] != "stable" || e.Labels["protocol"] != "grpc" {
		t.Errorf("endpoint = %+v", e)
	}

	// A failing check takes the instance out of the healthy set within 2 s.
	start := time.Now()
	if err := client.Agent().UpdateTTL("check-orders-2", "boom", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	snk.waitFor(t, 2*time.Second, "orders-2 unhealthy", func(st registry.State) bool {
		a := healthyAddrs(find(st, host))
		return len(a) == 1 && a[0] == "127.0.0.1:9001"
	})
	t.Logf("failing check reflected in %s", time.Since(start).Round(time.Millisecond))

	// Passing again brings it back.
	if err := client.Agent().UpdateTTL("check-orders-2", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	snk.waitFor(t, 2*time.Second, "orders-2 healthy again", func(st registry.State) bool {
		return len(healthyAddrs(find(st, host))) == 2
	})

	// Deregistration removes it within 2 s.
	start = time.Now()
	if err := client.Agent().ServiceDeregister("orders-2"); err != nil {
		t.Fatal(err)
	}
	snk.waitFor(t, 2*time.Second, "orders-2 gone", func(st registry.State) bool {
		s := find(st, host)
		return s != nil && len(s.Endpoints) == 1
	})
	t.Logf("deregistration reflected in %s", time.Since(start).Round(time.Millisecond))

	// Idle Consul: no requests at all during a quiet window; every watch
	// sits in its blocking query.
	time.Sleep(300 * time.Millisecond)
	base, states := requests.Load(), snk.count()
	time.Sleep(2 * time.Second)
	if n := requests.Load() - base; n != 0 {
		t.Fatalf("meshd made %d requests to an idle Consul in 2s; want 0 (blocking queries)", n)
	}
	if snk.count() != states {
		t.Fatalf("states reported while Consul was idle")
	}

	// A new service appears; the last instance leaving drops the service.
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "pay-1", Name: "payments", Address: "127.0.0.3", Port: 7000}); err != nil {
		t.Fatal(err)
	}
	snk.waitFor(t, 2*time.Second, "payments discovered", func(st registry.State) bool {
		return len(healthyAddrs(find(st, "payments.service.consul"))) == 1
	})
	if err := client.Agent().ServiceDeregister("pay-1"); err != nil {
		t.Fatal(err)
	}
	snk.waitFor(t, 2*time.Second, "payments gone", func(st registry.State) bool {
		return find(st, "payments.service.consul") == nil
	})
	for _, w := range src.Status() {
		if w.Errors > 0 {
			t.Errorf("watch %s had errors: %s", w.Path, w.LastError)
		}
	}
}

// TestRealConsulACL checks that the token from config is what the source
// sends: with ACLs on and default deny, no token sees no services, and a
// token with service:read and node:read sees them.
func TestRealConsulACL(t *testing.T) {
	const mgmt = "9b3f2c1e-0d7a-4e55-8f1a-6c2d3e4f5a6b"
	agent := testservers.StartConsulWith(t, testservers.ConsulOptions{ManagementToken: mgmt})
	admin, err := api.NewClient(&api.Config{Address: agent.HTTPAddr, Token: mgmt})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "inv-1", Name: "inventory", Address: "127.0.0.1", Port: 9100}); err != nil {
		t.Fatal(err)
	}
	policy, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{
		Name:  "meshd-read",
		Rules: `service_prefix "" { policy = "read" }` + "\n" + `node_prefix "" { policy = "read" }`,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("no token sees nothing", func(t *testing.T) {
		cfg := Default()
		cfg.Address = agent.HTTPAddr
		cfg.Token = "00000000-0000-0000-0000-000000000000" // anonymous has no rights
		_, snk, stop := startSource(t, cfg)
		defer stop()
		time.Sleep(time.Second)
		if st, ok := snk.last(); ok && find(st, "inventory.service.consul") != nil {
			t.Fatalf("a token without rights discovered inventory")
		}
	})
	t.Run("read token sees the service", func(t *testing.T) {
		cfg := Default()
		cfg.Address = agent.HTTPAddr
		cfg.Token = tok.SecretID
		_, snk, stop := startSource(t, cfg)
		defer stop()
		snk.waitFor(t, 5*time.Second, "inventory discovered with the token", func(st registry.State) bool {
			return len(healthyAddrs(find(st, "inventory.service.consul"))) == 1
		})
	})
}
