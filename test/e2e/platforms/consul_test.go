package platforms

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshd/meshd/internal/testservers"
	"github.com/meshd/meshd/test/e2e"
)

// countingProxy forwards to Consul and counts requests, so a test can see
// what meshd asks.
func countingProxy(t *testing.T, addr string) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	target, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	// Parked blocking queries are cancelled at shutdown; not worth a log.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

func register(t *testing.T, c *api.Client, id, name string, b *backend, meta map[string]string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: name, Address: "127.0.0.1", Port: b.port, Meta: meta, Tags: []string{"e2e"},
		Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "10m", Status: api.HealthPassing},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// processCPU returns this process's CPU time (user + system).
func processCPU(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	// Fields after the parenthesised command name: state is field 3, utime
	// and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// TestConsul: services and health checks registered in a real Consul agent
// reach a grpc-go client through meshd; a failing check and a
// deregistration take the instance out of traffic within 2 s; and an idle
// Consul costs meshd no requests and next to no CPU.
func TestConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real Consul agent and a grpc-go client process")
	}
	agent := testservers.StartConsul(t)
	cc, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	a, b := newBackend(t, "orders-a"), newBackend(t, "orders-b")
	meta := map[string]string{"protocol": "grpc", "meshd-port": "7070"}
	register(t, cc, "orders-a", "orders", a, meta)
	register(t, cc, "orders-b", "orders", b, meta)

	proxy, requests := countingProxy(t, agent.HTTPAddr)
	m := startMeshd(t, options{ConsulAddr: proxy})
	cl := newClient(t, m.xds.Addr().String(), "default")
	const target = "xds:///orders.service.consul:7070"
	cl.warm(t, target)

	r := cl.run(batch{Target: target, N: 40})
	if r.Codes["OK"] != 40 || r.Backends["orders-a"] == 0 || r.Backends["orders-b"] == 0 {
		t.Fatalf("both instances should serve: %v %v (%s)", r.Backends, r.Codes, r.FirstErr)
	}

	t.Run("a failing health check takes the instance out within 2s", func(t *testing.T) {
		if err := cc.Agent().UpdateTTL("check-orders-b", "down", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		took := cl.until(t, target, 10, 2*time.Second, "orders-a")
		t.Logf("failing check out of traffic after %s", took.Round(time.Millisecond))
		if err := cc.Agent().UpdateTTL("check-orders-b", "up", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			r := cl.run(batch{Target: target, N: 20})
			if r.Backends["orders-b"] > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("orders-b never came back: %v", r.Backends)
			}
		}
	})

	t.Run("deregistration takes the instance out within 2s", func(t *testing.T) {
		if err := cc.Agent().ServiceDeregister("orders-a"); err != nil {
			t.Fatal(err)
		}
		took := cl.until(t, target, 10, 2*time.Second, "orders-b")
		t.Logf("deregistered instance out of traffic after %s", took.Round(time.Millisecond))
	})

	t.Run("an idle Consul costs no requests and flat CPU", func(t *testing.T) {
		time.Sleep(time.Second) // let the last wakeups settle
		req0, cpu0, wall0 := requests.Load(), processCPU(t), time.Now()
		time.Sleep(5 * time.Second)
		reqs, cpu, wall := requests.Load()-req0, processCPU(t)-cpu0, time.Since(wall0)
		t.Logf("quiet window %s: %d requests to Consul, %s CPU (%.2f%% of a core)", wall.Round(time.Millisecond), reqs, cpu, 100*cpu.Seconds()/wall.Seconds())
		if total := processCPU(t); total == 0 {
			t.Fatal("process CPU reads 0 since start; /proc/self/stat was not parsed")
		} else {
			t.Logf("process CPU since start: %s", total)
		}
		if reqs != 0 {
			t.Errorf("meshd made %d requests to an idle Consul; blocking queries should all be parked", reqs)
		}
		// Everything in this process (meshd's modules, backends, test)
		// together: polling Consul would show here; parked queries do not.
		if cpu > 250*time.Millisecond {
			t.Errorf("process used %s of CPU in %s while Consul was idle, want < 250ms", cpu, wall)
		}
		_, body := m.get(t, "/debug/consulz")
		if !strings.Contains(body, "/v1/health/service/orders") {
			t.Errorf("/debug/consulz lacks the orders watch:\n%s", body)
		}
	})
}

// procCPU returns a process's CPU time (user + system) from /proc.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// TestConsulIdleBinary runs the real meshd binary (`meshd serve`) beside a
// real Consul agent holding 30 services with health checks, and measures
// the meshd process alone: while Consul is idle it makes no requests and
// its CPU stays flat; when a check flaps, it wakes, follows, and settles.
func TestConsulIdleBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds meshd, real Consul agent")
	}
	agent := testservers.StartConsul(t)
	cc, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	b := newBackend(t, "svc")
	const services = 30
	for i := range services {
		register(t, cc, fmt.Sprintf("svc-%02d-1", i), fmt.Sprintf("svc-%02d", i), b, map[string]string{"protocol": "grpc"})
	}
	proxy, requests := countingProxy(t, agent.HTTPAddr)
	srv := e2e.Start(t, e2e.Options{Config: fmt.Sprintf(`
modules:
  pilot:
    registries: [config, consul]
  pilot-consul:
    enabled: true
    address: %s
`, proxy)})
	srv.WaitReady(t, 60*time.Second)
	pid := srv.Cmd.Process.Pid

	// Every watch parked: the catalog and one per service.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, body := srv.Get(t, "/debug/consulz")
		if strings.Count(body, `"path": "/v1/health/service/svc-`) == services {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watches not all up:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)

	req0, cpu0, wall0 := requests.Load(), procCPU(t, pid), time.Now()
	time.Sleep(5 * time.Second)
	reqs, cpu, wall := requests.Load()-req0, procCPU(t, pid)-cpu0, time.Since(wall0)
	t.Logf("idle: %d services, %s window: %d requests to Consul, meshd CPU %s (%.2f%% of a core)",
		services, wall.Round(time.Millisecond), reqs, cpu, 100*cpu.Seconds()/wall.Seconds())
	if reqs != 0 {
		t.Errorf("meshd made %d requests to an idle Consul", reqs)
	}
	if cpu > 100*time.Millisecond {
		t.Errorf("meshd used %s CPU in %s with Consul idle; want flat (< 100ms)", cpu, wall)
	}

	// A flapping check wakes one watch per change, no more.
	req0 = requests.Load()
	for i := range 10 {
		status := api.HealthCritical
		if i%2 == 1 {
			status = api.HealthPassing
		}
		if err := cc.Agent().UpdateTTL("check-svc-07-1", "flap", status); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	flapReqs := requests.Load() - req0
	t.Logf("10 check flips: %d requests to Consul", flapReqs)
	if flapReqs < 10 || flapReqs > 30 {
		t.Errorf("10 check flips cost %d requests; want about one per flip on the one watch", flapReqs)
	}
}
