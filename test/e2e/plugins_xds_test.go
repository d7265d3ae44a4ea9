package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	_ "google.golang.org/grpc/xds" // the xds:/// resolver, for the child process
)

// echoBackend answers every gRPC method with its own name.
func echoBackend(t *testing.T, name string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		var in wrapperspb.StringValue
		if err := stream.RecvMsg(&in); err != nil {
			return err
		}
		return stream.SendMsg(wrapperspb.String(name))
	}))
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// xdsChild is a grpc-go client in a child process (grpc-go reads its xDS
// bootstrap once per process): the test binary running
// TestPluginsXDSChild, one target per stdin line, one answer per stdout
// line.
type xdsChild struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr *syncBuffer
}

type childAnswer struct {
	Backend string `json:"backend"`
	Err     string `json:"err"`
}

func newXDSChild(t *testing.T, xdsAddr string) *xdsChild {
	t.Helper()
	bootstrap, _ := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri": xdsAddr, "channel_creds": []any{map[string]any{"type": "insecure"}}, "server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       fmt.Sprintf("plugins-e2e-%d", os.Getpid()),
			"metadata": map[string]any{"NAMESPACE": "shop", "GENERATOR": "grpc"},
			"locality": map[string]any{"region": "local", "zone": "a"},
		},
	})
	c := &xdsChild{stderr: &syncBuffer{}}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestPluginsXDSChild$")
	c.cmd.Env = append(os.Environ(), "MESHD_PLUGINS_XDS_CHILD=1", "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap), "GRPC_GO_LOG_SEVERITY_LEVEL=error")
	c.cmd.Stderr = c.stderr
	var err error
	if c.in, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewScanner(out)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.in.Close()
		done := make(chan struct{})
		go func() { _ = c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("xDS client stderr:\n%s", c.stderr.String())
		}
	})
	return c
}

// call makes one RPC to target and says which backend answered.
func (c *xdsChild) call(t *testing.T, target string) childAnswer {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, target); err != nil {
		t.Fatal(err)
	}
	for c.out.Scan() {
		line, ok := strings.CutPrefix(c.out.Text(), "ANSWER ")
		if !ok {
			continue
		}
		var a childAnswer
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	t.Fatalf("xDS client exited: %s", c.stderr.String())
	return childAnswer{}
}

// TestPluginsXDSChild is the xDS client; it runs only as a child of
// TestPluginsXDS.
func TestPluginsXDSChild(t *testing.T) {
	if os.Getenv("MESHD_PLUGINS_XDS_CHILD") != "1" {
		t.Skip("child process of TestPluginsXDS")
	}
	conns := map[string]*grpc.ClientConn{}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		target := in.Text()
		cc := conns[target]
		if cc == nil {
			var err error
			if cc, err = grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
				fmt.Println("ANSWER", `{"err":"dial"}`)
				continue
			}
			conns[target] = cc
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var resp wrapperspb.StringValue
		err := cc.Invoke(ctx, "/meshd.test.Echo/Call", wrapperspb.String("hi"), &resp, grpc.WaitForReady(true))
		cancel()
		a := childAnswer{Backend: resp.GetValue()}
		if err != nil {
			a.Err = err.Error()
		}
		fmt.Print("ANSWER ")
		_ = out.Encode(a)
	}
	os.Exit(0)
}

// registryHas reports whether pilot's registry lists host, from
// /debug/registryz.
func (s *Server) registryHas(t *testing.T, host string) bool {
	t.Helper()
	code, body := s.Get(t, "/debug/registryz")
	if code != 200 {
		t.Fatalf("/debug/registryz: %d", code)
	}
	var reg struct {
		Services []struct {
			Hostname string `json:"hostname"`
			Source   string `json:"source"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &reg); err != nil {
		t.Fatal(err)
	}
	for _, svc := range reg.Services {
		if svc.Hostname == host && svc.Source == "csv" {
			return true
		}
	}
	return false
}

// TestPluginsXDS: services from the CSV discovery plugin reach a real
// grpc-go xDS client through `meshd serve`; the plugin killed with SIGKILL
// leaves meshd serving them, and once restarted it feeds changes again.
func TestPluginsXDS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meshd and plugins")
	}
	mods, _ := Run(t, t.TempDir(), nil, "modules", "list")
	for _, m := range []string{"xds", "galley", "pilot", "plugins", "pilot-plugins"} {
		found := false
		for line := range strings.SplitSeq(mods, "\n") {
			found = found || strings.HasPrefix(line, m+" ")
		}
		if !found {
			t.Skipf("meshd is built without module %s (cmd/meshd/cli/modules.go); this test needs xds, galley, pilot and the plugin modules", m)
		}
	}
	b1, b2 := echoBackend(t, "b1"), echoBackend(t, "b2")
	const host = "echo.shop.svc.cluster.local"
	dir := t.TempDir()
	csv := filepath.Join(dir, "services.csv")
	writeCSV := func(backend string) {
		_, port, _ := net.SplitHostPort(backend)
		row := fmt.Sprintf("host,namespace,port,port_name,protocol,address,endpoint_port\n%s,shop,7000,grpc,GRPC,127.0.0.1,%s\n", host, port)
		if err := os.WriteFile(csv+".tmp", []byte(row), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(csv+".tmp", csv); err != nil {
			t.Fatal(err)
		}
	}
	writeCSV(b1)
	if err := os.MkdirAll(filepath.Join(dir, "mesh"), 0o700); err != nil {
		t.Fatal(err)
	}
	path, sum := examplePlugin(t, "csv-source")
	s := Start(t, Options{Dir: dir, Config: fmt.Sprintf(`modules:
  galley:
    paths: [./mesh]
  plugins:
    healthInterval: 200ms
    backoff: {initial: 300ms, max: 1s}
    plugins:
    - name: csv
      kind: discovery
      path: %s
      sha256: "%s"
      config:
        file: %s
        debounce: 20ms
`, path, sum, csv)})
	s.WaitReady(t, 60*time.Second)

	target := "xds:///" + host + ":7000"
	child := newXDSChild(t, s.XDS)
	if a := child.call(t, target); a.Backend != "b1" {
		t.Fatalf("RPC through xDS: %+v", a)
	}

	// SIGKILL the plugin: meshd keeps serving what it reported.
	sts := s.plugins(t)
	old := sts[0].PID
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if !s.registryHas(t, host) {
			t.Fatal("the plugin's service left pilot's registry while the plugin was down")
		}
		if a := child.call(t, target); a.Backend != "b1" {
			t.Fatalf("RPC while the plugin restarts: %+v", a)
		}
		st := s.plugins(t)[0]
		if st.State == "up" && st.Restarts >= 1 && st.PID != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin not restarted: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-s.Done():
		t.Fatal("meshd exited")
	default:
	}
	if _, body := s.Get(t, "/metrics"); !strings.Contains(body, `meshd_plugin_restarts_total{kind="discovery",plugin="csv"} 1`) {
		t.Error("/metrics lacks the restart")
	}

	// The restarted plugin feeds changes again.
	writeCSV(b2)
	deadline = time.Now().Add(15 * time.Second)
	for {
		a := child.call(t, target)
		if a.Backend == "b2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client never moved to b2: %+v", a)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
