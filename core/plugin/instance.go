package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	basev1 "github.com/meshd/meshd/core/plugin/proto/base/v1"
)

// State is where a plugin instance is in its life.
type State string

// States of a plugin instance.
const (
	// StateStarting: the process is being launched and configured.
	StateStarting State = "starting"
	// StateUp: running, configured and answering health checks.
	StateUp State = "up"
	// StateDown: crashed, unhealthy or failed to start; a restart is
	// scheduled. Consumers keep the last good state they had from it.
	StateDown State = "down"
	// StateStopped: meshd is shutting down.
	StateStopped State = "stopped"
)

// Info is what a plugin says about itself through the base service.
type Info struct {
	Name             string `json:"name"`
	Kind             string `json:"kind"`
	Version          string `json:"version"`
	Description      string `json:"description,omitempty"`
	ProtocolVersions []int  `json:"protocolVersions"`
}

// Status is one plugin instance as `meshd plugins list` shows it.
type Status struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	Path      string    `json:"path"`
	State     State     `json:"state"`
	Plugin    string    `json:"plugin,omitempty"`  // the plugin's own name
	Version   string    `json:"version,omitempty"` // the plugin's own version
	Protocol  int       `json:"protocol,omitempty"`
	PID       int       `json:"pid,omitempty"`
	Restarts  int       `json:"restarts"`
	Since     time.Time `json:"since"`
	LastError string    `json:"lastError,omitempty"`
}

// Conn is the connection to one running process of a plugin. A restart
// makes a new Conn; an old one fails its calls with Unavailable.
type Conn struct {
	cc       *grpc.ClientConn
	protocol int
	info     Info
	done     <-chan struct{}
}

// ClientConn is what a kind's generated gRPC client is built on.
func (c *Conn) ClientConn() grpc.ClientConnInterface { return c.cc }

// Protocol is the protocol version host and plugin agreed on.
func (c *Conn) Protocol() int { return c.protocol }

// Info is what the plugin reported at this start.
func (c *Conn) Info() Info { return c.info }

// Done is closed when this process exits or is killed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Instance is one plugin declared in meshd.yaml, across its restarts.
// Consumers hold it for the life of the host and ask it for the current
// connection.
type Instance struct {
	cfg  PluginConfig
	path string
	sum  []byte
	host *Module
	log  *slog.Logger

	mu       sync.Mutex
	claimed  bool
	state    State
	gen      *generation
	upCh     chan struct{} // closed on the next transition to up
	restarts int
	since    time.Time
	lastErr  string
	lastInfo Info
	lastProt int
}

// generation is one process of a plugin.
type generation struct {
	client  *goplugin.Client
	conn    *Conn
	pid     int
	started time.Time
}

// Name is the instance name from meshd.yaml.
func (in *Instance) Name() string { return in.cfg.Name }

// Kind is the plugin's kind.
func (in *Instance) Kind() string { return in.cfg.Kind }

// Logger returns meshd's logger tagged with this plugin.
func (in *Instance) Logger() *slog.Logger { return in.log }

// Current returns the connection to the running process, or an error
// wrapping ErrDown while there is none.
func (in *Instance) Current() (*Conn, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.state == StateUp && in.gen != nil {
		return in.gen.conn, nil
	}
	if in.state == StateStopped {
		return nil, Error(in.cfg.Name, ErrStopped)
	}
	return nil, Error(in.cfg.Name, ErrDown)
}

// Conn waits until the plugin is up and returns its connection. It fails
// when ctx ends or the host stops.
func (in *Instance) Conn(ctx context.Context) (*Conn, error) {
	for {
		in.mu.Lock()
		if in.state == StateUp && in.gen != nil {
			c := in.gen.conn
			in.mu.Unlock()
			return c, nil
		}
		if in.state == StateStopped {
			in.mu.Unlock()
			return nil, Error(in.cfg.Name, ErrStopped)
		}
		ch := in.upCh
		in.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-in.host.stop:
			return nil, Error(in.cfg.Name, ErrStopped)
		}
	}
}

// Status returns the instance's current status.
func (in *Instance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	st := Status{
		Name: in.cfg.Name, Kind: in.cfg.Kind, Path: in.path, State: in.state,
		Restarts: in.restarts, Since: in.since, LastError: in.lastErr,
		Plugin: in.lastInfo.Name, Version: in.lastInfo.Version, Protocol: in.lastProt,
	}
	if in.gen != nil && in.state == StateUp {
		st.PID = in.gen.pid
	}
	return st
}

func (in *Instance) setState(s State, errText string) {
	in.state = s
	in.since = time.Now()
	if errText != "" {
		in.lastErr = errText
	}
}

// verify checks the binary's checksum before anything runs it, with an
// error that says what to do. go-plugin checks it again right before exec.
func (in *Instance) verify() error {
	f, err := os.Open(in.path)
	if err != nil {
		return fmt.Errorf("open binary: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat binary: %w", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", in.path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read binary: %w", err)
	}
	if got := h.Sum(nil); !slices.Equal(got, in.sum) {
		return fmt.Errorf("%w: %s has sha256 %s but meshd.yaml says %s; refusing to run it (if the new binary is trusted, put its `sha256sum` in modules.plugins)",
			ErrChecksum, in.path, hex.EncodeToString(got), hex.EncodeToString(in.sum))
	}
	return nil
}

// launch starts one process, negotiates, checks its Info against
// meshd.yaml, validates and sends its config. On any error the process is
// killed before launch returns.
func (in *Instance) launch() (g *generation, err error) {
	if err := in.verify(); err != nil {
		return nil, err
	}
	cfg := in.host.cfg
	cmd := exec.Command(in.path, in.cfg.Args...)
	level := "info"
	if in.log.Enabled(context.Background(), slog.LevelDebug) {
		level = "debug"
	}
	cmd.Env = []string{envMaxMessageSize + "=" + strconv.Itoa(cfg.MaxMessageSize), envLogLevel + "=" + level}
	prepareCommand(cmd)
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: hostPluginSets(in.cfg.Kind),
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		SecureConfig:     &goplugin.SecureConfig{Checksum: in.sum, Hash: sha256.New()},
		StartTimeout:     cfg.StartTimeout,
		Logger:           newHCLogger(in.log),
		SyncStdout:       &lineLogger{log: in.log, level: slog.LevelInfo, attrs: []any{"stream", "stdout"}},
		SyncStderr:       &lineLogger{log: in.log, level: slog.LevelWarn, attrs: []any{"stream", "stderr"}},
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(cfg.MaxMessageSize),
			grpc.MaxCallSendMsgSize(cfg.MaxMessageSize),
		)},
		// Not Managed: go-plugin's managed list keeps every client ever
		// made, one per restart, for the life of the process. Each client
		// is killed here instead, on every error path and in Cleanup, and
		// Pdeathsig plus the SDK's parent watch cover meshd dying.
	})
	defer func() {
		if err != nil {
			killClient(client, 0)
		}
	}()
	rpc, err := client.Client()
	if err != nil {
		return nil, startError(err)
	}
	pid, _ := strconv.Atoi(client.ID())
	raw, err := rpc.Dispense(in.cfg.Kind)
	if err != nil {
		return nil, fmt.Errorf("dispense %s: %w", in.cfg.Kind, err)
	}
	d, ok := raw.(*dispensed)
	if !ok {
		return nil, fmt.Errorf("dispense %s: unexpected %T", in.cfg.Kind, raw)
	}
	conn := &Conn{cc: d.cc, protocol: client.NegotiatedVersion(), done: d.done}
	info, err := in.configure(conn)
	if err != nil {
		return nil, err
	}
	conn.info = info
	return &generation{client: client, conn: conn, pid: pid, started: time.Now()}, nil
}

// configure runs the base service at each start: Info (is this the kind
// meshd.yaml says, does it speak the negotiated version), ConfigSchema, and
// SetConfig with the section validated against the schema.
func (in *Instance) configure(conn *Conn) (Info, error) {
	base := basev1.NewBaseClient(conn.cc)
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), in.host.cfg.CallTimeout)
	}
	ctx, cancel := call()
	pi, err := base.Info(ctx, &basev1.InfoRequest{})
	cancel()
	if err != nil {
		return Info{}, fmt.Errorf("base Info: %w", rpcError(err))
	}
	info := Info{Name: pi.GetName(), Kind: pi.GetKind(), Version: pi.GetVersion(), Description: pi.GetDescription()}
	for _, v := range pi.GetProtocolVersions() {
		info.ProtocolVersions = append(info.ProtocolVersions, int(v))
	}
	if info.Kind != in.cfg.Kind {
		return Info{}, fmt.Errorf("%w: meshd.yaml declares kind %q but %s is a %q plugin (%s %s)",
			ErrIncompatible, in.cfg.Kind, in.path, info.Kind, info.Name, info.Version)
	}
	if !slices.Contains(info.ProtocolVersions, conn.protocol) {
		return Info{}, fmt.Errorf("%w: negotiated protocol %d, but the plugin reports versions %v", ErrIncompatible, conn.protocol, info.ProtocolVersions)
	}
	ctx, cancel = call()
	ps, err := base.ConfigSchema(ctx, &basev1.ConfigSchemaRequest{})
	cancel()
	if err != nil {
		return Info{}, fmt.Errorf("base ConfigSchema: %w", rpcError(err))
	}
	schema, err := schemaFromProto(ps)
	if err != nil {
		return Info{}, fmt.Errorf("%w: the plugin's schema is unusable: %w", ErrIncompatible, err)
	}
	values, err := schema.Apply(in.cfg.Config, in.host.configPath(in.cfg.Name)+".config")
	if err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	raw, err := json.Marshal(values)
	if err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	ctx, cancel = call()
	_, err = base.SetConfig(ctx, &basev1.SetConfigRequest{ConfigJson: raw, ProtocolVersion: int32(conn.protocol), Instance: in.cfg.Name})
	cancel()
	if err != nil {
		return Info{}, fmt.Errorf("%w: the plugin refused its config: %w", ErrConfig, rpcError(err))
	}
	return info, nil
}

// rpcError turns a gRPC status into an error that reads well in a log line.
func rpcError(err error) error {
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", s.Code(), s.Message())
	}
	return err
}

// startError explains go-plugin's start failures.
func startError(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, goplugin.ErrChecksumsDoNotMatch):
		return fmt.Errorf("%w: the binary changed between meshd's check and exec", ErrChecksum)
	case strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("%w: %s (this meshd speaks plugin protocol versions %v)", ErrIncompatible, msg, ProtocolVersions)
	case strings.Contains(msg, "Unrecognized remote plugin message"):
		return fmt.Errorf("%w: the binary did not answer the meshd plugin handshake; is it a meshd plugin built with the SDK, and does it print to stdout before sdk.Serve? (%s)", ErrIncompatible, firstLine(msg))
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		return fmt.Errorf("start: no handshake within modules.plugins.startTimeout: %w", err)
	}
	return fmt.Errorf("start: %w", err)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// killClient ends a plugin process through go-plugin (graceful shutdown,
// then kill after 2 s, then waiting for its goroutines). A process that no
// longer answers at all (stopped, wedged) could hold go-plugin's graceful
// path forever, so after grace it is sent SIGKILL directly.
func killClient(c *goplugin.Client, pid int) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Kill()
	}()
	select {
	case <-done:
		return
	case <-time.After(3 * time.Second):
	}
	if pid == 0 {
		pid, _ = strconv.Atoi(c.ID())
	}
	if pid > 0 {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	}
	<-done
}

// supervise keeps the instance running until ctx ends: it watches the
// process and its health, and restarts it with jittered exponential
// backoff when it exits or stops answering.
func (in *Instance) supervise(ctx context.Context) {
	cfg := in.host.cfg
	backoff := cfg.Backoff.Initial
	for {
		in.mu.Lock()
		g := in.gen
		in.mu.Unlock()
		if g == nil {
			in.mu.Lock()
			in.setState(StateStarting, "")
			in.mu.Unlock()
			ng, err := safeLaunch(in)
			if err == nil && ctx.Err() != nil {
				killClient(ng.client, ng.pid)
				return
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				in.markDown(err)
				wait := jitter(backoff)
				in.log.Warn("plugin restart failed; retrying", "err", err, "retry", wait)
				if !sleep(ctx, wait) {
					return
				}
				backoff = min(backoff*2, cfg.Backoff.Max)
				continue
			}
			in.markUp(ng, true)
			g = ng
		}
		err := in.watch(ctx, g)
		if ctx.Err() != nil {
			return
		}
		in.mu.Lock()
		in.gen = nil
		in.mu.Unlock()
		killClient(g.client, g.pid)
		in.markDown(err)
		if time.Since(g.started) > time.Minute {
			backoff = cfg.Backoff.Initial
		}
		wait := jitter(backoff)
		in.log.Warn("plugin down; its consumers keep its last good state; restarting", "err", err, "retry", wait)
		if !sleep(ctx, wait) {
			return
		}
		backoff = min(backoff*2, cfg.Backoff.Max)
	}
}

func safeLaunch(in *Instance) (g *generation, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while starting the plugin: %v", r)
		}
	}()
	return in.launch()
}

// watch returns why g stopped being usable: the process exited, or a
// health check failed. It returns nil when ctx ends.
func (in *Instance) watch(ctx context.Context, g *generation) error {
	cfg := in.host.cfg
	health := healthpb.NewHealthClient(g.conn.cc)
	t := time.NewTicker(cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.conn.done:
			return errors.New("plugin process exited")
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, cfg.HealthTimeout)
		resp, err := health.Check(hctx, &healthpb.HealthCheckRequest{Service: goplugin.GRPCServiceName})
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// A process that just exited fails its health check too (its
			// socket closed) a moment before go-plugin notices the exit:
			// give the exit a moment to show, so the reason is the right one.
			grace := time.NewTimer(500 * time.Millisecond)
			select {
			case <-g.conn.done:
				grace.Stop()
				return errors.New("plugin process exited")
			case <-grace.C:
			case <-ctx.Done():
				grace.Stop()
				return nil
			}
			return fmt.Errorf("health check: %w", rpcError(err))
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health check: %s", resp.GetStatus())
		}
	}
}

func (in *Instance) markUp(g *generation, restart bool) {
	in.mu.Lock()
	in.gen = g
	if restart {
		in.restarts++
	}
	in.lastInfo, in.lastProt = g.conn.info, g.conn.protocol
	in.setState(StateUp, "")
	close(in.upCh)
	in.upCh = make(chan struct{})
	restarts := in.restarts
	in.mu.Unlock()
	in.host.upGauge.WithLabelValues(in.cfg.Name, in.cfg.Kind).Set(1)
	if restart {
		in.host.restartCount.WithLabelValues(in.cfg.Name, in.cfg.Kind).Inc()
	}
	in.log.Info("plugin up", "reports", g.conn.info.Name, "version", g.conn.info.Version, "protocol", g.conn.protocol, "pid", g.pid, "restarts", restarts)
	in.host.bus.Publish(PluginUp{Name: in.cfg.Name, Kind: in.cfg.Kind, Version: g.conn.info.Version, PID: g.pid, Restarts: restarts})
}

func (in *Instance) markDown(err error) {
	in.mu.Lock()
	wasUp := in.state == StateUp
	in.setState(StateDown, err.Error())
	restarts := in.restarts
	in.mu.Unlock()
	in.host.upGauge.WithLabelValues(in.cfg.Name, in.cfg.Kind).Set(0)
	if wasUp {
		in.host.bus.Publish(PluginDown{Name: in.cfg.Name, Kind: in.cfg.Kind, Reason: err.Error(), Restarts: restarts})
	}
}

// stop kills the running process, if any, for good.
func (in *Instance) stop() {
	in.mu.Lock()
	g := in.gen
	in.gen = nil
	in.setState(StateStopped, "")
	in.mu.Unlock()
	if g != nil {
		killClient(g.client, g.pid)
	}
	in.host.upGauge.WithLabelValues(in.cfg.Name, in.cfg.Kind).Set(0)
}

func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dispensed is what the host's side of every kind dispenses: the raw
// connection, and the context go-plugin cancels when the process exits.
type dispensed struct {
	cc   *grpc.ClientConn
	done <-chan struct{}
}

// hostPluginSets is the versioned plugin set the host offers for one
// instance: the same generic plugin under the instance's kind for every
// protocol version; the consumer's shim picks the client for the
// negotiated version.
func hostPluginSets(kind string) map[int]goplugin.PluginSet {
	sets := map[int]goplugin.PluginSet{}
	for _, v := range ProtocolVersions {
		sets[v] = goplugin.PluginSet{kind: &GRPCPlugin{
			Connect: func(ctx context.Context, cc *grpc.ClientConn) (any, error) {
				return &dispensed{cc: cc, done: ctx.Done()}, nil
			},
		}}
	}
	return sets
}

// envMaxMessageSize tells the plugin the host's message size limit, so
// both ends agree.
const envMaxMessageSize = "MESHD_PLUGIN_MAX_MESSAGE_SIZE"
