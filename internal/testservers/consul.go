package testservers

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// ConsulAgent is a running `consul agent -dev` on loopback.
type ConsulAgent struct {
	*Process
	// HTTPAddr is the HTTP API address, host:port.
	HTTPAddr string
	// Datacenter is the agent's datacenter.
	Datacenter string
	// Node is the agent's node name.
	Node string
}

// ConsulOptions adjust StartConsulWith.
type ConsulOptions struct {
	// ManagementToken, when set, turns ACLs on with default deny and makes
	// this the initial management token.
	ManagementToken string
}

// StartConsul starts a Consul agent in dev mode (an in-memory server that
// elects itself) with every port on loopback and DNS and gRPC off, and waits
// until it has a leader and has registered its own node. It takes about 2 s.
func StartConsul(t testing.TB) *ConsulAgent {
	t.Helper()
	return StartConsulWith(t, ConsulOptions{})
}

// StartConsulWith is StartConsul with options.
func StartConsulWith(t testing.TB, opts ConsulOptions) *ConsulAgent {
	t.Helper()
	bin := Consul.Require(t)
	for attempt := 0; ; attempt++ {
		a, err := startConsul(t, bin, opts)
		if err == nil {
			return a
		}
		// A free port may have been taken between choosing and binding.
		if attempt == 2 {
			t.Fatal(err)
		}
		t.Logf("consul did not start, retrying on other ports: %v", err)
	}
}

func startConsul(t testing.TB, bin string, opts ConsulOptions) (*ConsulAgent, error) {
	dir := t.TempDir()
	a := &ConsulAgent{HTTPAddr: hostPort(FreePort(t)), Datacenter: "dc1", Node: "meshd-test"}
	args := []string{
		"agent", "-dev",
		"-bind=127.0.0.1", "-client=127.0.0.1", "-advertise=127.0.0.1",
		"-node=" + a.Node, "-datacenter=" + a.Datacenter,
		"-http-port=" + strings.TrimPrefix(a.HTTPAddr, "127.0.0.1:"),
		"-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
		fmt.Sprintf("-serf-lan-port=%d", FreePort(t)),
		fmt.Sprintf("-serf-wan-port=%d", FreePort(t)),
		fmt.Sprintf("-server-port=%d", FreePort(t)),
		"-log-level=warn",
		"-hcl=disable_update_check = true",
	}
	token := opts.ManagementToken
	if token != "" {
		args = append(args, `-hcl=acl { enabled = true default_policy = "deny" tokens { initial_management = "`+token+`" agent = "`+token+`" } }`)
	}
	p := startProcess(t, "consul", bin, args, dir, "CHECKPOINT_DISABLE=1")
	a.Process = p
	client := &http.Client{Timeout: time.Second}
	get := func(path string) (string, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+a.HTTPAddr+path, nil)
		if token != "" {
			req.Header.Set("X-Consul-Token", token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s: %s", path, resp.Status, b)
		}
		return string(b), nil
	}
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		leader, err := get("/v1/status/leader")
		if err == nil && strings.Trim(leader, "\" \n") == "" {
			err = fmt.Errorf("no leader yet")
		}
		if err == nil {
			var nodes string
			nodes, err = get("/v1/catalog/nodes")
			if err == nil && !strings.Contains(nodes, a.Node) {
				err = fmt.Errorf("own node not registered yet")
			}
		}
		if err == nil {
			t.Logf("consul %s ready on %s in %s", ConsulVersion, a.HTTPAddr, time.Since(start).Round(time.Millisecond))
			return a, nil
		}
		if p.Exited() {
			return nil, fmt.Errorf("consul exited: %v\n%s", p.err, p.Tail(4096))
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("consul not ready within 30s: %v\n%s", err, p.Tail(4096))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
