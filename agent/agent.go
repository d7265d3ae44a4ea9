// Package agent is `meshd agent`, the node agent for workloads outside
// Kubernetes (VMs, bare metal). It runs beside each workload and:
//
//   - gives the workload its identity: an ECDSA P-256 key made here and
//     never sent anywhere, and a certificate for
//     spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount> from meshd's
//     CA, obtained once with a join token and then renewed with itself at a
//     random point between 50% and 80% of its lifetime. Key, chain and trust
//     bundle live in the data dir and survive restarts, so the token is
//     needed again only when the certificate expired while meshd was out of
//     reach (creds.go, identity.go, caclient.go);
//   - keeps the trust bundle current from meshd's SDS secret ROOTCA on its
//     own xDS stream, which is also the workload's registration: meshd's
//     autoregister module turns it into an endpoint, checked against the
//     WorkloadGroup the node names (session.go);
//   - probes the workload and reports its health (probe.go);
//   - serves the certificate ("default") and bundle ("ROOTCA") to the local
//     Envoy over SDS on a Unix socket (sds.go), and writes them as files,
//     replaced together, for proxyless gRPC applications (files.go);
//   - writes an Envoy bootstrap and a gRPC xDS bootstrap (bootstrap.go),
//     and, when enabled, runs and supervises Envoy (envoy.go).
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshd/meshd/core"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/core/atomicfile"
)

// Agent is a running meshd agent.
type Agent struct {
	cfg      *Config
	log      *slog.Logger
	out      io.Writer // Envoy's output
	version  string
	now      func() time.Time
	files    *certDir
	pin      []byte
	verifier *verifier
	probe    *prober

	cur       atomic.Pointer[creds]
	connected atomic.Bool
	renewKick chan struct{}

	mu       sync.Mutex
	anchors  []*x509.Certificate // configured roots (rootCertFile), or fetched for the pin
	watchers []chan struct{}
}

// ExitError is an error with the process exit code meshd's CLI uses.
type ExitError = core.ExitError

// Exit codes.
const (
	// ExitConfig: the config or the stored identity is unusable, or the
	// agent needs something only an operator can give (a join token, a
	// correct root). Restarting will not help until that is fixed.
	ExitConfig = 2
)

func fatal(err error) error { return &ExitError{Code: ExitConfig, Err: err} }

// Options are what the command passes besides the config.
type Options struct {
	Logger  *slog.Logger
	Output  io.Writer // where Envoy's output goes
	Version string
}

// New checks the config's files and prepares an agent. It does not touch
// the network.
func New(cfg *Config, opts Options) (*Agent, error) {
	a := &Agent{
		cfg: cfg, log: opts.Logger, out: opts.Output, version: opts.Version, now: time.Now,
		files:     &certDir{dir: cfg.Files.Dir, share: cfg.Files.ShareWithGroup},
		renewKick: make(chan struct{}, 1),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.out == nil {
		a.out = io.Discard
	}
	if a.version == "" {
		a.version = "dev"
	}
	a.verifier = &verifier{name: cfg.ControlPlane.ServerName, roots: a.trustedRoots}
	a.probe = newProber(cfg.Workload.Probe, a.probeTLS)
	if cfg.ControlPlane.RootPin != "" {
		a.pin, _ = ParsePin(cfg.ControlPlane.RootPin) // checked by LoadConfig
	}
	if f := cfg.ControlPlane.RootCertFile; f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fatal(fmt.Errorf("controlPlane.rootCertFile: %w", err))
		}
		roots, err := parseCerts(data)
		if err != nil {
			return nil, fatal(fmt.Errorf("controlPlane.rootCertFile %s: %w", f, err))
		}
		a.anchors = roots
	}
	return a, nil
}

// Run starts the agent and runs it until ctx ends. It returns an
// *ExitError for problems restarting cannot fix.
func (a *Agent) Run(ctx context.Context) error {
	// Owner only, unless the certificate files are shared with the group,
	// which must then be able to reach them. The socket and state file
	// are 0600 either way.
	dirMode := os.FileMode(0o700)
	if a.cfg.Files.ShareWithGroup {
		dirMode = 0o750
	}
	if err := os.MkdirAll(a.cfg.DataDir, dirMode); err != nil {
		return fatal(fmt.Errorf("dataDir: %w", err))
	}
	if err := os.Chmod(a.cfg.DataDir, dirMode); err != nil {
		return fatal(fmt.Errorf("dataDir: %w", err))
	}
	a.log.Info("meshd agent starting", "version", a.version, "identity", a.cfg.SPIFFEID(), "workload", a.cfg.Workload.Name,
		"address", a.cfg.Workload.Address, "controlPlane", a.cfg.ControlPlane.Address, "dataDir", a.cfg.DataDir)

	stored, err := loadCreds(a.files, a.cfg.SPIFFEID())
	if err != nil {
		return fatal(fmt.Errorf("%w; if the files were damaged or the identity changed, move %s away and start the agent with a join token in %s",
			err, a.cfg.Files.Dir, a.cfg.Identity.JoinTokenFile))
	}
	if stored != nil {
		if st := a.readState(); st.Serial == stored.serial() {
			stored.schedule(st.Received)
		}
		a.cur.Store(stored)
		if stored.valid(a.now()) {
			a.log.Info("using the stored certificate", "serial", stored.serial(), "notAfter", stored.leaf.NotAfter.UTC().Format(time.RFC3339),
				"renewAt", stored.renewAt.UTC().Format(time.RFC3339))
		}
	}
	if !stored.valid(a.now()) {
		if err := a.enroll(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting for meshd
			}
			return err
		}
	}

	if err := a.writeBootstraps(); err != nil {
		return fatal(err)
	}
	sds, err := newSDSServer(a.cfg.SDS.Socket)
	if err != nil {
		return fatal(err)
	}
	var envoy *envoySupervisor
	if a.cfg.Envoy.Enabled {
		if envoy, err = newEnvoySupervisor(a.cfg.Envoy, a.cfg.Envoy.BootstrapFile, a.out, a.log.With("component", "envoy")); err != nil {
			sds.lis.Close()
			return fatal(err)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	changed := a.watch()
	if err := sds.set(a.cur.Load()); err != nil {
		sds.lis.Close()
		return err
	}
	sdsErr := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); sdsErr <- sds.serve(ctx) }()
	goRun(func(ctx context.Context) {
		for {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				if err := sds.set(a.cur.Load()); err != nil {
					a.log.Error("cannot update the SDS secrets", "error", err)
				}
			}
		}
	})
	goRun(a.renewLoop)
	goRun(a.runSession)
	goRun(a.probe.run)
	if envoy != nil {
		goRun(envoy.run)
	}
	a.log.Info("meshd agent ready", "sds", a.cfg.SDS.Socket, "certs", a.cfg.Files.Dir,
		"envoyBootstrap", a.cfg.Envoy.BootstrapFile, "grpcBootstrap", a.cfg.GRPCBootstrap.File)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-sdsErr:
	}
	cancel()
	wg.Wait()
	if runErr == nil {
		a.log.Info("meshd agent stopped")
	}
	return runErr
}

// enroll gets the first certificate (or one after the last expired),
// retrying while meshd is out of reach. A missing or refused token, an
// untrusted meshd or a root pin that does not match end it with an
// ExitError: only an operator can fix those.
func (a *Agent) enroll(ctx context.Context) error {
	b := a.backoff()
	for {
		c, err := a.obtain(ctx)
		if err == nil {
			a.adopt(c)
			return nil
		}
		var noToken *errNoToken
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &noToken), errors.Is(err, ErrRefused), errors.Is(err, ErrPinMismatch), errors.Is(err, ErrUntrustedServer):
			return fatal(err)
		}
		d := b.next()
		a.log.Warn("cannot reach meshd to obtain a certificate; retrying", "address", a.cfg.ControlPlane.Address,
			"error", err, "retryIn", d.Round(time.Millisecond))
		if !sleep(ctx, d, nil) {
			return ctx.Err()
		}
	}
}

// writeBootstraps writes the Envoy and gRPC bootstrap files.
func (a *Agent) writeBootstraps() error {
	env, err := a.envoyBootstrapJSON()
	if err != nil {
		return err
	}
	if err := atomicfile.WriteBytes(a.cfg.Envoy.BootstrapFile, env, 0o644); err != nil {
		return fmt.Errorf("envoy.bootstrapFile: %w", err)
	}
	g, err := a.grpcBootstrapJSON()
	if err != nil {
		return err
	}
	if err := atomicfile.WriteBytes(a.cfg.GRPCBootstrap.File, g, 0o644); err != nil {
		return fmt.Errorf("grpcBootstrap.file: %w", err)
	}
	return nil
}

func (a *Agent) setConnected(v bool) { a.connected.Store(v) }

// jitter spreads d by ±20%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// NewAgentCommand returns `meshd agent`.
func NewAgentCommand() *cobra.Command {
	var file, logLevel string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent beside a workload outside Kubernetes: identity, SDS, bootstrap files, registration",
		Long: `Run the node agent beside a workload on a VM or bare metal.

The agent makes the workload's key, gets its certificate from meshd's CA with
a join token once, renews it with itself from then on, serves it to the local
Envoy over SDS (a Unix socket) and as files for proxyless gRPC applications,
writes an Envoy and a gRPC xDS bootstrap, registers the workload with meshd
through a WorkloadGroup, and reports its health. See docs/vm-onboarding.md.

Exit status 2 means the agent needs an operator: the config, the stored
identity, the root of trust or a join token. Unreachable meshd is retried.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fatal(errors.New("-c agent.yaml is required"))
			}
			cfg, err := LoadConfig(file)
			if err != nil {
				return fatal(err)
			}
			if logLevel != "" {
				cfg.Log.Level = logLevel
			}
			log := newLogger(cmd.ErrOrStderr(), cfg.Log)
			a, err := New(cfg, Options{Logger: log, Output: cmd.ErrOrStderr(), Version: versionOf(cmd)})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return a.Run(ctx)
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "agent config file (YAML)")
	cmd.Flags().StringVar(&logLevel, "log-level", "", "log level, overriding log.level")
	cmd.AddCommand(newPinCommand())
	return cmd
}

// versionOf finds meshd's version on the root command.
func versionOf(cmd *cobra.Command) string {
	if v := cmd.Root().Version; v != "" {
		return v
	}
	return "dev"
}

func newLogger(w io.Writer, cfg LogConfig) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// newPinCommand is `meshd agent pin ROOT.pem`: print the pin of each root.
func newPinCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pin ROOT.pem",
		Short: "Print the rootPin (sha256 of the certificate) of each root in a PEM file, e.g. from meshd ca roots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			roots, err := parseCerts(data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			for _, r := range roots {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t(expires %s)\n", Pin(r.Raw), r.Subject, r.NotAfter.UTC().Format(time.RFC3339))
			}
			return nil
		},
	}
}
