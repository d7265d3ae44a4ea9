package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

// The test binary doubles as a plugin and as a plugin host, so the tests
// launch real processes without building anything:
//
//	<test binary> -meshd-test-plugin=<mode>   a plugin (see runTestPlugin)
//	MESHD_PLUGIN_TEST_HOST=<config json>      a host (see runTestHost)
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "-meshd-test-plugin=") {
		runTestPlugin(strings.TrimPrefix(os.Args[1], "-meshd-test-plugin="))
		return
	}
	if cfg := os.Getenv("MESHD_PLUGIN_TEST_HOST"); cfg != "" {
		os.Exit(runTestHost(cfg))
	}
	goleak.VerifyTestMain(m)
}

// testPluginConfig is the test plugin's config section.
type testPluginConfig struct {
	Greeting   string        `json:"greeting" doc:"printed to stdout once configured"`
	Log        string        `json:"log" doc:"logged at warn level once configured"`
	CrashAfter time.Duration `json:"crashAfter" doc:"exit(2) this long after configuration; 0 never"`
	Refuse     bool          `json:"refuse" doc:"refuse the config"`
	Mode       string        `json:"mode" allowed:"a,b" doc:"a restricted value"`
	Count      int           `json:"count"`
}

// runTestPlugin serves a plugin of kind sink with no kind service, only the
// base service. Modes: ok; wrongkind (says it is a validator); nohandshake
// (prints garbage instead of serving); slowstart (sleeps 5 s first). Each
// start records its PID in $MESHD_PLUGIN_TEST_MARKER, when set.
func runTestPlugin(mode string) {
	if dir := os.Getenv("MESHD_PLUGIN_TEST_MARKER"); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o600)
	}
	if os.Getenv("MESHD_PLUGIN_TEST_NO_PARENT_WATCH") == "1" {
		noParentWatch = true
	}
	kind := KindSink
	switch mode {
	case "wrongkind":
		kind = KindValidator
	case "nohandshake":
		fmt.Println("hello, I am not a plugin")
		time.Sleep(time.Minute)
		os.Exit(0)
	case "slowstart":
		time.Sleep(5 * time.Second)
	}
	schema, err := SchemaOf(&testPluginConfig{Mode: "a"})
	if err != nil {
		panic(err)
	}
	Serve(ServeConfig{
		Info:   Info{Name: "test-plugin", Kind: kind, Version: "1.2.3", Description: "the test binary as a plugin"},
		Schema: schema,
		Configure: func(_ context.Context, req ConfigRequest) error {
			var c testPluginConfig
			if err := DecodeConfig(req.JSON, &c); err != nil {
				return err
			}
			if c.Refuse {
				return fmt.Errorf("refusing config as asked (instance %s, protocol %d)", req.Instance, req.Protocol)
			}
			if c.Greeting != "" {
				fmt.Println(c.Greeting)
			}
			if c.Log != "" {
				PluginLogger().Warn(c.Log, "count", c.Count)
			}
			if c.CrashAfter > 0 {
				time.AfterFunc(c.CrashAfter, func() { os.Exit(2) })
			}
			return nil
		},
		Servers: map[int]func(*grpc.Server) error{1: func(*grpc.Server) error { return nil }},
	})
}

// runTestHost runs a plugins module from a JSON config until SIGTERM (then
// cleans up and exits 0) or until it is killed. It prints "PIDS <pid>..."
// once its plugins are up.
func runTestHost(raw string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "host config:", err)
		return 1
	}
	if os.Getenv("MESHD_PLUGIN_TEST_NO_PDEATHSIG") == "1" {
		noPdeathsig = true
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	m := new(Module)
	if err := m.Setup(Options{Config: &cfg, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	var pids []string
	for _, st := range m.Statuses() {
		pids = append(pids, strconv.Itoa(st.PID))
	}
	fmt.Println("PIDS " + strings.Join(pids, " "))
	<-sigs
	cancel()
	<-done
	_ = m.Cleanup()
	return 0
}

// self returns this test binary's path and SHA-256, the plugin under test.
var self = sync.OnceValues(func() (string, string) {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		panic(err)
	}
	return exe, hex.EncodeToString(h.Sum(nil))
})

// testPlugin declares the test binary as a plugin in mode with config.
func testPlugin(name, mode string, config map[string]any) PluginConfig {
	exe, sum := self()
	return PluginConfig{Name: name, Kind: KindSink, Path: exe, SHA256: sum, Args: []string{"-meshd-test-plugin=" + mode}, Config: config}
}
