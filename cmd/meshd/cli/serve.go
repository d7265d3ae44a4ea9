package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/store"
	"github.com/spf13/cobra"
	"golang.org/x/net/netutil"
)

func newServeCmd(reg *core.Registry) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the control plane: every enabled module, xDS, CA and the admin server",
		Long: `Run the control plane.

With no config file, meshd starts on an embedded default: a bbolt store under
./data, the admin server on 127.0.0.1:15014, and the default modules enabled.
Config comes from the file given with -c, then MESHD_* environment variables,
then flags; see docs/config-reference.md.

SIGTERM or SIGINT shuts down gracefully within shutdownTimeout; a second
signal exits at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := loadConfig(cmd.Flags(), reg)
			if err != nil {
				return err
			}
			log := core.NewLogger(cmd.ErrOrStderr(), l.Root.Log)
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
			defer signal.Stop(sigs)
			return serve(l, reg, log, sigs)
		},
	}
	addConfigFlags(cmd.Flags())
	return cmd
}

// adminMaxConns bounds concurrent admin connections; the admin API is for
// operators and scrapers, never for a crowd.
const adminMaxConns = 64

func serve(l *loaded, reg *core.Registry, log *slog.Logger, sigs <-chan os.Signal) error {
	st, err := store.Open(l.Root.DataDir, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()

	host, err := core.NewHost(core.HostOptions{
		Config:   l.Root,
		Registry: reg,
		Store:    st,
		Logger:   log,
		Version:  version,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", l.Root.Admin.Address)
	if err != nil {
		return fmt.Errorf("admin server: %w", err)
	}
	ln = netutil.LimitListener(ln, adminMaxConns)
	admin := &http.Server{
		Handler:           host.AdminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      2 * time.Minute, // /debug/pprof/profile streams for 30 s by default
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	if err := host.Provision(); err != nil {
		ln.Close()
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- host.Run(ctx) }()
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Serve(ln) }()

	mods := make([]string, 0, len(host.Modules()))
	for _, m := range host.Modules() {
		mods = append(mods, string(m.ID))
	}
	log.Info("meshd serving", "version", version, "admin", ln.Addr().String(), "dataDir", l.Root.DataDir, "modules", mods)

	var runErr error
	select {
	case runErr = <-runDone:
		log.Error("module failed; shutting down", "err", runErr)
	case err := <-adminDone:
		runErr = fmt.Errorf("admin server: %w", err)
		cancel()
		<-runDone
	case sig := <-sigs:
		log.Info("shutting down", "signal", sig.String(), "timeout", l.Root.ShutdownTimeout)
		cancel()
		go func() {
			if s, ok := <-sigs; ok {
				log.Error("second signal; exiting now", "signal", s.String())
				os.Exit(1)
			}
		}()
		timer := time.NewTimer(l.Root.ShutdownTimeout)
		defer timer.Stop()
		select {
		case runErr = <-runDone:
		case <-timer.C:
			return fmt.Errorf("shutdown did not finish within %s", l.Root.ShutdownTimeout)
		}
	}

	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if err := admin.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("admin server shutdown", "err", err)
	}
	if err := host.Cleanup(); err != nil {
		runErr = errors.Join(runErr, err)
	}
	if runErr == nil {
		log.Info("meshd stopped")
	}
	return runErr
}
