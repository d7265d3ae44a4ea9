package xds_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	_ "google.golang.org/grpc/xds" // xds:/// resolver, for the child process
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/statuscmd"
)

// echoGen is the end-to-end test's generator: one service, "echo", whose
// route splits traffic between clusters c1 and c2 (one backend each) by
// weight. It registers one generator per type, all reading the same state.
type echoGen struct {
	mu       sync.Mutex
	backends [2]string // host:port
	weights  [2]uint32
	maglev   bool // make c2 something grpc-go rejects
}

type typeGen struct {
	g   *echoGen
	url string
}

func (t typeGen) Key(*api.Proxy) string { return "" }

func (t typeGen) Generate(_ context.Context, req api.GenerateRequest) ([]api.Resource, error) {
	g := t.g
	g.mu.Lock()
	defer g.mu.Unlock()
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	var out []api.Resource
	switch t.url {
	case api.ListenerType:
		router, _ := anypb.New(&routerv3.Router{})
		hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "echo-route", ConfigSource: ads}},
			HttpFilters:    []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		})
		out = append(out, api.Resource{Name: "echo", Message: &listenerv3.Listener{Name: "echo", ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}})
	case api.RouteType:
		out = append(out, api.Resource{Name: "echo-route", Message: &routev3.RouteConfiguration{Name: "echo-route", VirtualHosts: []*routev3.VirtualHost{{
			Name: "echo", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
					Clusters: []*routev3.WeightedCluster_ClusterWeight{
						{Name: "c1", Weight: wrapperspb.UInt32(g.weights[0])},
						{Name: "c2", Weight: wrapperspb.UInt32(g.weights[1])},
					}}}}}}}}}}})
	case api.ClusterType:
		for i, name := range []string{"c1", "c2"} {
			c := &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
				EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads}, ConnectTimeout: durationpb.New(time.Second)}
			if i == 1 && g.maglev {
				c.LbPolicy = clusterv3.Cluster_MAGLEV
			}
			out = append(out, api.Resource{Name: name, Message: c})
		}
	case api.EndpointType:
		for i, name := range []string{"c1", "c2"} {
			host, port := splitHostPort(g.backends[i])
			out = append(out, api.Resource{Name: name, Message: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
				// grpc-go drops a locality without a weight, and (1.85)
				// rejects one without an ID.
				Locality:            &corev3.Locality{Region: "r1", Zone: "z1"},
				LoadBalancingWeight: wrapperspb.UInt32(1),
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}},
			}}}})
		}
	}
	if req.Names != nil { // incremental: only what was asked
		var sel []api.Resource
		for _, r := range out {
			for _, n := range req.Names {
				if r.Name == n {
					sel = append(sel, r)
				}
			}
		}
		out = sel
	}
	return out, nil
}

func splitHostPort(hp string) (string, uint32) {
	h, p, _ := net.SplitHostPort(hp)
	var port uint32
	fmt.Sscan(p, &port)
	return h, port
}

// e2eGenModule registers the echo generators through the same API pilot
// uses: core.Dep on the xds module.
type e2eGenModule struct{ gen *echoGen }

var e2eGen = &echoGen{}
var e2eXDS *xds.Module

func (*e2eGenModule) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "e2egen", Requires: []core.ModuleID{xds.ID}, New: func() core.Module { return &e2eGenModule{gen: e2eGen} }}
}

func (m *e2eGenModule) Provision(ctx *core.Context) error {
	x, err := core.Dep[api.XDS](ctx, xds.ID)
	if err != nil {
		return err
	}
	for _, url := range []string{api.ListenerType, api.RouteType, api.ClusterType, api.EndpointType} {
		if err := x.RegisterGenerator(url, typeGen{m.gen, url}); err != nil {
			return err
		}
	}
	e2eXDS, err = core.Dep[*xds.Module](ctx, xds.ID)
	return err
}

// startBackend serves the health service on 127.0.0.1.
func startBackend(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, health.NewServer())
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// clientWindow is one line of the child's report: RPCs per backend in the
// last 100 ms.
type clientWindow struct {
	Counts map[string]int `json:"counts"`
	Errors int            `json:"errors"`
	Last   string         `json:"lastError,omitempty"`
}

// TestE2EGRPCClient runs a real grpc-go xDS client (in a child process,
// since grpc-go reads its bootstrap at init) against meshd's xds module
// in a core host, with two real backends.
func TestE2EGRPCClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	b1, b2 := startBackend(t), startBackend(t)
	e2eGen.mu.Lock()
	e2eGen.backends, e2eGen.weights, e2eGen.maglev = [2]string{b1, b2}, [2]uint32{90, 10}, false
	e2eGen.mu.Unlock()

	reg := core.NewRegistry()
	must(t, reg.Add(new(xds.Module)))
	must(t, reg.Add(new(e2eGenModule)))
	st, err := store.Open(t.TempDir(), store.Options{})
	must(t, err)
	defer st.Close()
	cfg := core.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Modules = map[string]map[string]any{"xds": {"address": "127.0.0.1:0", "debounce": map[string]any{"quiet": "10ms", "max": "100ms"}}}
	host, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st})
	must(t, err)
	events := host.Bus().Subscribe("test", "xds.proxy.*")
	must(t, host.Provision())
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- host.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("host run: %v", err)
		}
		must(t, host.Cleanup())
	}()
	admin := httptest.NewServer(host.AdminHandler())
	defer admin.Close()

	// The child: this test binary, running TestE2EChild with a bootstrap
	// pointing at meshd.
	nodeID := "sidecar~127.0.0.1~client.default~default.svc.cluster.local"
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],
		"node":{"id":%q,"metadata":{"GENERATOR":"grpc","NAMESPACE":"default","SERVICE_ACCOUNT":"client"}}}`, e2eXDS.Addr().String(), nodeID)
	cmd := exec.Command(os.Args[0], "-test.run=^TestE2EChild$")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP_CONFIG="+bootstrap, "MESHD_E2E_CHILD=1")
	stdin, err := cmd.StdinPipe()
	must(t, err)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	must(t, cmd.Start())
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	}()
	windows := make(chan clientWindow, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "E2E ")
			if !ok {
				continue
			}
			var w clientWindow
			if json.Unmarshal([]byte(line), &w) == nil {
				windows <- w
			}
		}
		close(windows)
	}()
	// waitFor reads windows until cond holds for one with at least 5 RPCs.
	waitFor := func(what string, cond func(n1, n2 int) bool) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		var last clientWindow
		for {
			select {
			case w, ok := <-windows:
				if !ok {
					t.Fatalf("child exited while waiting for %s; stderr:\n%s", what, stderr.String())
				}
				last = w
				n1, n2 := w.Counts[b1], w.Counts[b2]
				if n1+n2 >= 5 && cond(n1, n2) {
					return
				}
			case <-deadline:
				t.Fatalf("timed out waiting for %s; last window %+v", what, last)
			}
		}
	}

	// 1. Real RPCs flow, mostly to b1 (90/10).
	waitFor("RPCs weighted 90/10 to b1", func(n1, n2 int) bool { return n1 > 3*n2 })
	waitEvent(t, events, api.TopicProxyConnected)

	// 2. A changed weight is observed by the running client.
	e2eGen.mu.Lock()
	e2eGen.weights = [2]uint32{10, 90}
	e2eGen.mu.Unlock()
	e2eXDS.Push(api.FullPush("weights"))
	waitFor("RPCs weighted 10/90 to b2", func(n1, n2 int) bool { return n2 > 3*n1 })

	// 3. A cluster grpc-go rejects: NACKed, reported, not resent, and RPCs
	// keep flowing on the last good config.
	e2eGen.mu.Lock()
	e2eGen.maglev = true
	e2eGen.mu.Unlock()
	e2eXDS.Push(api.FullPush("bad lb policy"))
	nack := waitEvent(t, events, api.TopicProxyNacked).(api.ProxyNacked)
	if nack.TypeURL != api.ClusterType || !strings.Contains(nack.Nack.Message, "MAGLEV") {
		t.Fatalf("NACK event %+v", nack)
	}
	cds := syncz(t, admin.URL, nodeID, api.ClusterType)
	if cds.State != api.Nacked || cds.LastNack == nil || !strings.Contains(cds.LastNack.Message, "lbPolicy") {
		t.Fatalf("/debug/syncz CDS: %+v", cds)
	}
	if len(cds.LastNack.Resources) != 1 || cds.LastNack.Resources[0] != "c2" {
		t.Errorf("NACK names %v, want [c2]", cds.LastNack.Resources)
	}
	sent := cds.Responses
	time.Sleep(time.Second)
	if again := syncz(t, admin.URL, nodeID, api.ClusterType); again.Responses != sent || again.State != api.Nacked {
		t.Errorf("after 1 s: %d CDS responses (was %d), state %s: the NACKed version was resent", again.Responses, sent, again.State)
	}
	waitFor("RPCs still flowing on the last good config", func(n1, n2 int) bool { return n2 > 3*n1 })

	// meshd status shows it and exits 1.
	var out bytes.Buffer
	cmd2 := statuscmd.NewStatusCommand()
	cmd2.SetOut(&out)
	cmd2.SetArgs([]string{"--admin", strings.TrimPrefix(admin.URL, "http://")})
	err = cmd2.Execute()
	var ee *statuscmd.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("meshd status: err %v, want exit code 1", err)
	}
	if !strings.Contains(out.String(), "NACKED") || !strings.Contains(out.String(), "MAGLEV") || !strings.Contains(out.String(), "proxyless") {
		t.Errorf("meshd status output:\n%s", out.String())
	}
	t.Logf("meshd status:\n%s", out.String())

	// The reject counter.
	resp, err := http.Get(admin.URL + "/metrics")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `pilot_total_xds_rejects{type="cds"} 1`) {
		t.Errorf("metrics lack pilot_total_xds_rejects{type=\"cds\"} 1")
	}

	// config_dump shows what it was sent.
	resp, err = http.Get(admin.URL + "/debug/config_dump?proxy=" + nodeID)
	must(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"echo-route"`) || !strings.Contains(string(body), "type.googleapis.com/envoy.config.cluster.v3.Cluster") {
		t.Errorf("config_dump %d:\n%.2000s", resp.StatusCode, body)
	}

	// 4. Fixing the cluster heals it.
	e2eGen.mu.Lock()
	e2eGen.maglev = false
	e2eGen.mu.Unlock()
	e2eXDS.Push(api.FullPush("fixed"))
	deadline := time.Now().Add(10 * time.Second)
	for syncz(t, admin.URL, nodeID, api.ClusterType).State != api.Synced {
		if time.Now().After(deadline) {
			t.Fatal("CDS not SYNCED after the fix")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitEvent(t *testing.T, sub *bus.Subscription, topic bus.Topic) bus.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		evs, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v", topic, err)
		}
		for _, e := range evs {
			if e.Topic() == topic {
				return e
			}
		}
	}
}

func syncz(t *testing.T, base, proxy, typeURL string) api.TypeStatus {
	t.Helper()
	resp, err := http.Get(base + "/debug/syncz")
	must(t, err)
	defer resp.Body.Close()
	var all []api.ProxyStatus
	must(t, json.NewDecoder(resp.Body).Decode(&all))
	for _, p := range all {
		if p.ID != proxy {
			continue
		}
		if p.Type != api.Proxyless {
			t.Errorf("proxy type %s, want proxyless", p.Type)
		}
		for _, ts := range p.Types {
			if ts.TypeURL == typeURL {
				return ts
			}
		}
	}
	t.Fatalf("no %s status for %s in %+v", typeURL, proxy, all)
	return api.TypeStatus{}
}

// TestE2EChild is the grpc-go client. It runs only as TestE2EGRPCClient's
// child: it calls xds:///echo every few ms and prints, every 100 ms, which
// backend answered, until its stdin closes.
func TestE2EChild(t *testing.T) {
	if os.Getenv("MESHD_E2E_CHILD") != "1" {
		t.Skip("child process of TestE2EGRPCClient")
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	cc, err := grpc.NewClient("xds:///echo", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	hc := healthpb.NewHealthClient(cc)
	w := clientWindow{Counts: map[string]int{}}
	tick := time.NewTicker(100 * time.Millisecond)
	for {
		select {
		case <-tick.C:
			b, _ := json.Marshal(w)
			fmt.Printf("E2E %s\n", b)
			w = clientWindow{Counts: map[string]int{}}
		default:
		}
		var p peer.Peer
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cancel()
		if err != nil {
			w.Errors++
			w.Last = err.Error()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		w.Counts[p.Addr.String()]++
		time.Sleep(2 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
