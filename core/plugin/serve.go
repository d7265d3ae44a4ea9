package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	basev1 "github.com/meshd/meshd/core/plugin/proto/base/v1"
)

// GRPCPlugin adapts one kind's gRPC service to go-plugin, gRPC only. The
// plugin side sets Register, which registers the service; the host side
// sets Connect, which builds the client from the connection. Conformance
// tests set both and connect them with go-plugin's TestPluginGRPCConn.
type GRPCPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Register func(*grpc.Server) error
	Connect  func(ctx context.Context, cc *grpc.ClientConn) (any, error)
}

// GRPCServer implements goplugin.GRPCPlugin.
func (p *GRPCPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Register == nil {
		return errors.New("plugin: no server side for this kind")
	}
	return p.Register(s)
}

// GRPCClient implements goplugin.GRPCPlugin. ctx is cancelled when the
// plugin process exits.
func (p *GRPCPlugin) GRPCClient(ctx context.Context, _ *goplugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	if p.Connect == nil {
		return nil, errors.New("plugin: no client side for this kind")
	}
	return p.Connect(ctx, cc)
}

var _ goplugin.GRPCPlugin = (*GRPCPlugin)(nil)

// ConfigRequest is what SetConfig hands the plugin: its section as JSON
// (keys as in its schema, defaults filled in), the negotiated protocol
// version, and its instance name in meshd.yaml.
type ConfigRequest struct {
	JSON     []byte
	Protocol int
	Instance string
}

// ServeConfig is the plugin side of the protocol. The sdk package builds it
// from a kind's implementation; it is exported for kinds the SDK does not
// cover yet.
type ServeConfig struct {
	// Info says who the plugin is. ProtocolVersions is filled from Servers.
	Info Info
	// Schema describes the plugin's config section; nil means it takes
	// none.
	Schema Schema
	// Configure receives the config; an error refuses it and meshd does
	// not use the plugin. Nil accepts any config the schema allows.
	Configure func(ctx context.Context, req ConfigRequest) error
	// Servers registers the kind's service for each protocol version the
	// plugin speaks.
	Servers map[int]func(*grpc.Server) error
	// Logger receives go-plugin's own messages; nil means PluginLogger().
	Logger *slog.Logger
}

var (
	stderrOnce sync.Once
	stderr     *os.File
	pluginLog  *slog.Logger
)

// PluginLogger returns the logger a plugin process should use: JSON lines
// on its original stderr that meshd re-emits in its own log, tagged with
// the plugin's name, at their level. The level follows meshd's
// (MESHD_PLUGIN_LOG_LEVEL, set by the host).
func PluginLogger() *slog.Logger {
	stderrOnce.Do(func() {
		stderr = os.Stderr
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(os.Getenv(envLogLevel))); err != nil {
			lv = slog.LevelInfo
		}
		pluginLog = NewPluginLogger(stderr, lv)
	})
	return pluginLog
}

const envLogLevel = "MESHD_PLUGIN_LOG_LEVEL"

// Test knobs: the orphan tests turn off one of the two defences to show
// that the other one alone is enough.
var (
	noPdeathsig   bool
	noParentWatch bool
)

// Serve runs a plugin process: it answers the handshake, serves the base
// service and the kind's service until meshd closes it, and then exits the
// process. It also exits when its parent process goes away, so a plugin
// never outlives meshd. Run by hand, it explains that it is a meshd plugin
// (or, with --describe, prints its info and config schema as JSON).
func Serve(cfg ServeConfig) {
	log := cfg.Logger
	if log == nil {
		log = PluginLogger()
	} else {
		PluginLogger() // capture the original stderr before go-plugin swaps it
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(os.Stderr, "meshd plugin %s: %v\n", cfg.Info.Name, err)
		os.Exit(1)
	}
	if os.Getenv(Handshake.MagicCookieKey) != Handshake.MagicCookieValue {
		os.Exit(runByHand(cfg))
	}
	if !noParentWatch {
		watchParent(log, os.Getppid())
	}
	maxMsg := 16 << 20
	if n, err := strconv.Atoi(os.Getenv(envMaxMessageSize)); err == nil && n > 0 {
		maxMsg = n
	}
	base := &baseServer{cfg: cfg}
	sets := map[int]goplugin.PluginSet{}
	for v, register := range cfg.Servers {
		sets[v] = goplugin.PluginSet{cfg.Info.Kind: &GRPCPlugin{Register: func(s *grpc.Server) error {
			basev1.RegisterBaseServer(s, base)
			return register(s)
		}}}
	}
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: sets,
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts,
				grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg),
				grpc.ChainUnaryInterceptor(base.unaryGate),
				grpc.ChainStreamInterceptor(base.streamGate),
			)
			return grpc.NewServer(opts...)
		},
		Logger: newHCLogger(log),
	})
	os.Exit(0)
}

func (cfg *ServeConfig) check() error {
	if !knownKind(cfg.Info.Kind) {
		return fmt.Errorf("kind %q is not one of %s", cfg.Info.Kind, strings.Join(Kinds(), ", "))
	}
	if cfg.Info.Name == "" {
		return errors.New("Info.Name is empty")
	}
	if len(cfg.Servers) == 0 {
		return errors.New("no protocol version served")
	}
	cfg.Info.ProtocolVersions = cfg.Info.ProtocolVersions[:0]
	for v := range cfg.Servers {
		cfg.Info.ProtocolVersions = append(cfg.Info.ProtocolVersions, v)
	}
	slices.Sort(cfg.Info.ProtocolVersions)
	return cfg.Schema.Check()
}

func runByHand(cfg ServeConfig) int {
	if slices.Contains(os.Args[1:], "--describe") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(struct {
			Info   Info   `json:"info"`
			Schema Schema `json:"configSchema"`
		}{cfg.Info, cfg.Schema})
		return 0
	}
	fmt.Fprintf(os.Stderr, `%s %s is a meshd %s plugin; meshd starts it, it is not run by hand.
Declare it in meshd.yaml under modules.plugins.plugins (name, kind, path,
sha256, config) and run meshd serve. Run it with --describe to print its
info and config schema. See docs/plugins.md.
`, cfg.Info.Name, cfg.Info.Version, cfg.Info.Kind)
	return 1
}

// watchParent exits the process when its parent changes: meshd died
// without killing it (SIGKILL on a system without a parent-death signal),
// and the process was re-parented.
func watchParent(log *slog.Logger, ppid int) {
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for range t.C {
			if os.Getppid() != ppid {
				log.Warn("meshd (parent process) is gone; exiting", "parent", ppid)
				os.Exit(3)
			}
		}
	}()
}

// baseServer answers the base service and gates the kind's service until
// the plugin is configured. It also turns panics in the plugin's code into
// Internal errors, so one bad call does not take the process down.
type baseServer struct {
	basev1.UnimplementedBaseServer
	cfg        ServeConfig
	configured atomic.Bool
	mu         sync.Mutex
}

func (b *baseServer) Info(context.Context, *basev1.InfoRequest) (*basev1.InfoResponse, error) {
	r := &basev1.InfoResponse{Name: b.cfg.Info.Name, Kind: b.cfg.Info.Kind, Version: b.cfg.Info.Version, Description: b.cfg.Info.Description}
	for _, v := range b.cfg.Info.ProtocolVersions {
		r.ProtocolVersions = append(r.ProtocolVersions, int32(v))
	}
	return r, nil
}

func (b *baseServer) ConfigSchema(context.Context, *basev1.ConfigSchemaRequest) (*basev1.ConfigSchemaResponse, error) {
	r, err := schemaToProto(b.cfg.Schema)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return r, nil
}

func (b *baseServer) SetConfig(ctx context.Context, req *basev1.SetConfigRequest) (*basev1.SetConfigResponse, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var values map[string]any
	if len(req.GetConfigJson()) > 0 {
		if err := json.Unmarshal(req.GetConfigJson(), &values); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "config is not a JSON object: %v", err)
		}
	}
	// The host checked the config; check again, since the plugin is the
	// one that relies on it.
	if _, err := b.cfg.Schema.Apply(values, "config"); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if b.cfg.Configure != nil {
		if err := b.cfg.Configure(ctx, ConfigRequest{JSON: req.GetConfigJson(), Protocol: int(req.GetProtocolVersion()), Instance: req.GetInstance()}); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	b.configured.Store(true)
	return &basev1.SetConfigResponse{}, nil
}

// gated reports whether a method needs the plugin configured first: the
// kind's own services do; the base, health and go-plugin's services do not.
func gated(method string) bool {
	return !strings.HasPrefix(method, "/meshd.plugin.base.") &&
		!strings.HasPrefix(method, "/grpc.health.") &&
		!strings.HasPrefix(method, "/plugin.")
}

func (b *baseServer) unaryGate(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if gated(info.FullMethod) && !b.configured.Load() {
		return nil, status.Error(codes.FailedPrecondition, "plugin not configured yet (SetConfig first)")
	}
	defer func() {
		if r := recover(); r != nil {
			PluginLogger().Error("panic in plugin call", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "plugin panicked: %v", r)
		}
	}()
	return handler(ctx, req)
}

func (b *baseServer) streamGate(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	if gated(info.FullMethod) && !b.configured.Load() {
		return status.Error(codes.FailedPrecondition, "plugin not configured yet (SetConfig first)")
	}
	defer func() {
		if r := recover(); r != nil {
			PluginLogger().Error("panic in plugin call", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "plugin panicked: %v", r)
		}
	}()
	return handler(srv, ss)
}
