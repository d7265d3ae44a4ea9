package citadel

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/xds"
	"go.uber.org/goleak"
)

// Environment of a child process: the kill tests re-exec the test binary
// as a meshd with citadel and a fake xDS server, and SIGKILL it.
const (
	envChildDir    = "CITADEL_TEST_CHILD_DIR"    // data dir; set means "be the child"
	envChildConfig = "CITADEL_TEST_CHILD_CONFIG" // JSON of modules.citadel
	envChildKillAt = "CITADEL_TEST_CHILD_KILL_AT"
	childInfoFile  = "child.json"
)

func TestMain(m *testing.M) {
	if file := os.Getenv(envBurstFile); file != "" {
		if err := runBurstClient(file); err != nil {
			fmt.Fprintln(os.Stderr, "burst client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if dir := os.Getenv(envChildDir); dir != "" {
		if err := runChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// probeModule reports the xDS TLS address the child's meshd bound.
type probeModule struct{}

func (*probeModule) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{ID: "citadel-probe", New: func() core.Module { return new(probeModule) },
		Requires: []core.ModuleID{"xds", ID}}
}

// childXDS receives the xDS TLS address in the child process.
var childXDS chan string

func (*probeModule) Provision(ctx *core.Context) error {
	x, err := core.Dep[*xds.Module](ctx, "xds")
	if err != nil {
		return err
	}
	childXDS <- x.TLSAddr().String()
	return nil
}

// childInfo is what the child tells its parent.
type childInfo struct {
	XDS   string `json:"xds"`
	Admin string `json:"admin"`
	PID   int    `json:"pid"`
}

// runChild runs citadel under a real core.Host until SIGTERM (or SIGKILL).
func runChild(dir string) error {
	if at := os.Getenv(envChildKillAt); at != "" {
		crashHook = func(point string) {
			if point == at {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	section := map[string]any{}
	if raw := os.Getenv(envChildConfig); raw != "" {
		if err := json.Unmarshal([]byte(raw), &section); err != nil {
			return err
		}
	}
	reg := core.NewRegistry()
	if err := reg.Add(new(Module)); err != nil {
		return err
	}
	if err := reg.Add(new(xds.Module)); err != nil {
		return err
	}
	if err := reg.Add(new(probeModule)); err != nil {
		return err
	}
	cfg := core.DefaultConfig()
	cfg.DataDir = dir
	cfg.Mesh.TrustDomain = testTD
	cfg.Modules = map[string]map[string]any{
		"citadel": section,
		"xds":     {"address": "127.0.0.1:0", "tlsAddress": "127.0.0.1:0"},
	}
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	host, err := core.NewHost(core.HostOptions{Config: cfg, Registry: reg, Store: st,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	childXDS = make(chan string, 1)
	if err := host.Provision(); err != nil {
		return err
	}
	defer host.Cleanup()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(lis, host.AdminHandler())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- host.Run(ctx) }()
	info := childInfo{XDS: <-childXDS, Admin: lis.Addr().String(), PID: os.Getpid()}
	raw, _ := json.Marshal(info)
	tmp := filepath.Join(dir, childInfoFile+".tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, childInfoFile)); err != nil {
		return err
	}
	return <-errc
}
