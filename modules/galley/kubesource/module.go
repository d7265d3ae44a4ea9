package kubesource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/api"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that adds the Kubernetes source to galley.
const ModuleID core.ModuleID = "galley-kubernetes"

// SourceName is the source's name in galley's /debug/configz.
const SourceName = "kubernetes"

// configzer is what the status writer reads galley's verdicts from.
type configzer interface {
	Configz() galley.Configz
}

// Module adds the Kubernetes config source to galley, writes statuses and
// serves the admission webhook. It is off unless
// modules.galley-kubernetes.enabled is true.
type Module struct {
	log     *slog.Logger
	src     *Source
	status  *StatusWriter
	sub     *bus.Subscription
	webhook *http.Server
	ln      net.Listener
}

var (
	_ core.Provisioner  = (*Module)(nil)
	_ core.Runner       = (*Module)(nil)
	_ core.CleanerUpper = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:                ModuleID,
		New:               func() core.Module { return new(Module) },
		Requires:          []core.ModuleID{"galley"},
		Config:            func() any { c := Default(); return &c },
		DisabledByDefault: true,
		Description:       "config from Istio's Kubernetes CRDs, with validation findings in each object's status and a validating admission webhook",
	}
}

// Provision builds the source, adds it to galley and opens the webhook
// listener.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	m.log = ctx.Logger()
	rc, err := cfg.Client().RESTConfig("meshd/galley")
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if m.src, err = New(*cfg, dyn, disc, m.log); err != nil {
		return err
	}
	g, err := core.Dep[api.Galley](ctx, "galley")
	if err != nil {
		return err
	}
	if err := g.AddSource(SourceName, m.src); err != nil {
		return err
	}
	if cfg.WriteStatus {
		cz, ok := g.(configzer)
		if !ok {
			return errors.New("galley does not report per-object verdicts; set writeStatus: false")
		}
		m.status = NewStatusWriter(m.src, dyn, verdictsFrom(cz), m.log)
		m.sub = ctx.Bus().Subscribe(string(ModuleID), api.TopicConfigAccepted, api.TopicConfigRejected)
	}
	if cfg.Webhook.Address != "" {
		l := &certLoader{certFile: cfg.Webhook.CertFile, keyFile: cfg.Webhook.KeyFile}
		tc, err := l.tlsConfig()
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("POST "+WebhookPath, NewWebhook(m.log))
		m.webhook = &http.Server{Handler: mux, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug)}
		if m.ln, err = net.Listen("tcp", cfg.Webhook.Address); err != nil {
			return fmt.Errorf("webhook: %w", err)
		}
		m.log.Info("admission webhook listening", "address", m.ln.Addr().String(), "path", WebhookPath)
	}
	return nil
}

// WebhookAddr returns the webhook's listen address, or nil.
func (m *Module) WebhookAddr() net.Addr {
	if m.ln == nil {
		return nil
	}
	return m.ln.Addr()
}

// Run serves the webhook and writes statuses until ctx ends.
func (m *Module) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if m.webhook != nil {
		wg.Go(func() {
			if err := m.webhook.ServeTLS(m.ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("webhook: %w", err)
			}
		})
	}
	if m.status != nil {
		kick := make(chan struct{}, 1)
		wg.Go(func() {
			for {
				if _, err := m.sub.Next(ctx); err != nil {
					return
				}
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		})
		wg.Go(func() { m.status.Run(ctx, kick) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	if m.webhook != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.webhook.Shutdown(sctx)
	}
	return err
}

// Cleanup closes the subscription and a listener that never served.
func (m *Module) Cleanup() error {
	if m.sub != nil {
		m.sub.Close()
	}
	if m.ln != nil {
		_ = m.ln.Close()
	}
	return nil
}

// verdictsFrom reads verdicts for this source's origins from galley's
// /debug/configz document.
func verdictsFrom(cz configzer) Verdicts {
	return func() map[string]Verdict {
		out := map[string]Verdict{}
		for _, o := range cz.Configz().Origins {
			if o.Source != SourceName {
				continue
			}
			switch {
			case o.State == galley.StateRejected && o.LastRejected != nil:
				out[o.Origin] = Verdict{Accepted: false, Findings: o.LastRejected.Findings}
			case o.State == galley.StateAccepted:
				out[o.Origin] = Verdict{Accepted: true, Findings: o.Warnings}
			}
		}
		return out
	}
}
