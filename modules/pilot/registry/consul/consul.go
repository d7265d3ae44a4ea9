// Package consul discovers services from a Consul catalog for pilot's
// registry aggregate.
//
// It watches with Consul's blocking queries, never by polling: one watch on
// /v1/catalog/services for the set of service names, and one per service on
// /v1/health/service/<name> for its instances and their checks. Each watch
// holds an index and asks Consul to answer only when the index moves past
// it, so an idle Consul costs meshd nothing but one request per watch every
// waitTime. Following Consul's advice for blocking-query clients, a watch
// resets its index when Consul's goes backwards (a restored snapshot or a
// new cluster), never blocks on index 0, rate-limits its own wakeups to one
// per minInterval, and retries errors with jittered exponential backoff,
// keeping its last good answer meanwhile.
//
// Mapping to pilot's model:
//
//   - host name <service>.service.<domain> in namespace <namespace> (config),
//     unless an instance's meta says meshd-hostname / meshd-namespace;
//   - one service port per distinct port clients use: the instance's
//     meta meshd-port when set (for dynamic ports), else its own port;
//     protocol from meta protocol (tcp, http, http2, grpc, Consul's names);
//   - endpoint labels from tags (k=v tags split, bare tags map to "") and
//     meta (meta wins);
//   - locality region = datacenter, zone = the service's or node's Consul
//     locality zone;
//   - healthy only when every check of the instance and its node passes
//     (Consul's "passing"); other instances are kept as unhealthy endpoints,
//     so they show in /debug/registryz but receive no traffic;
//   - identity: namespace as above, service account meta
//     meshd-service-account, else the service name.
package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/prometheus/client_golang/prometheus"
)

// SourceName is the registry source name (and model.Service.Source).
const SourceName = "consul"

// Service and node meta keys meshd reads.
const (
	MetaHostname       = "meshd-hostname"
	MetaNamespace      = "meshd-namespace"
	MetaPort           = "meshd-port"
	MetaServiceAccount = "meshd-service-account"
	MetaProtocol       = "protocol"
)

// Options carry what the host provides.
type Options struct {
	Log *slog.Logger
	// Metrics, when set, receives the source's counters.
	Metrics prometheus.Registerer
}

// Source is the Consul discovery source. It implements registry.Source.
type Source struct {
	cfg     Config
	client  *api.Client
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex
	watches map[string]*WatchStatus
}

var _ registry.Source = (*Source)(nil)

// New returns a source for cfg. It does not contact Consul.
func New(cfg Config, opts Options) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	token, err := cfg.token()
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	ac := api.DefaultNonPooledConfig()
	ac.Address, ac.Scheme = cfg.Address, "http"
	if strings.Contains(cfg.Address, "://") {
		u, _ := url.Parse(cfg.Address)
		ac.Address, ac.Scheme = u.Host, u.Scheme
	}
	ac.Datacenter = cfg.Datacenter
	ac.Token = token
	ac.TokenFile = ""
	ac.TLSConfig = api.TLSConfig{
		CAFile: cfg.TLS.CAFile, CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
		Address: cfg.TLS.ServerName, InsecureSkipVerify: cfg.TLS.InsecureSkipVerify,
	}
	// Every watch holds one connection for up to waitTime; keep them all
	// pooled instead of re-dialling on each wakeup.
	ac.Transport.MaxIdleConnsPerHost = 4096
	ac.Transport.MaxIdleConns = 4096
	ac.Transport.IdleConnTimeout = cfg.WaitTime + time.Minute
	ac.WaitTime = cfg.WaitTime
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Metrics)
	if err != nil {
		return nil, err
	}
	return &Source{cfg: cfg, client: client, log: log, metrics: m, watches: map[string]*WatchStatus{}}, nil
}

// WatchStatus describes one blocking-query watch, for debug views.
type WatchStatus struct {
	Path      string    `json:"path"`
	Index     uint64    `json:"index"`
	Queries   uint64    `json:"queries"`
	Changes   uint64    `json:"changes"`
	Errors    uint64    `json:"errors"`
	LastError string    `json:"lastError,omitempty"`
	LastWake  time.Time `json:"lastWake"`
}

// Status returns the state of every watch, sorted by path.
func (s *Source) Status() []WatchStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]WatchStatus, 0, len(s.watches))
	for _, w := range s.watches {
		out = append(out, *w)
	}
	slices.SortFunc(out, func(a, b WatchStatus) int { return cmp.Compare(a.Path, b.Path) })
	return out
}

func (s *Source) status(path string, f func(*WatchStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.watches[path]
	if w == nil {
		w = &WatchStatus{Path: path}
		s.watches[path] = w
	}
	f(w)
}

func (s *Source) dropStatus(path string) {
	s.mu.Lock()
	delete(s.watches, path)
	s.mu.Unlock()
}

// Run watches Consul and reports through sink until ctx ends. The first
// report comes once the service list and every service's instances have
// been read (or have failed once), so the first push is not half a catalog.
// Consul errors never end Run: watches retry with backoff and the last good
// state keeps serving.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &run{
		s:        s,
		sink:     sink,
		names:    make(chan map[string]struct{}, 1),
		results:  make(chan result, 64),
		watching: map[string]context.CancelFunc{},
		entries:  map[string][]*api.ServiceEntry{},
		pending:  map[string]bool{},
		prev:     map[model.Key]*model.Service{},
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { r.watchCatalog(ctx) })
	return r.loop(ctx, &wg)
}

type result struct {
	name    string
	entries []*api.ServiceEntry
	err     error
}

// run is the state of one Run.
type run struct {
	s        *Source
	sink     registry.Sink
	names    chan map[string]struct{} // latest service-name set; 1 slot, newest wins
	results  chan result
	watching map[string]context.CancelFunc
	entries  map[string][]*api.ServiceEntry
	pending  map[string]bool // services whose first answer has not come yet
	listed   bool            // the service list has been read once
	synced   bool            // the first state was reported
	prev     map[model.Key]*model.Service
	services map[string][]*model.Service // by Consul service name
}

func (r *run) loop(ctx context.Context, wg *sync.WaitGroup) error {
	r.services = map[string][]*model.Service{}
	for {
		dirty := map[string]bool{}
		select {
		case <-ctx.Done():
			return nil
		case names := <-r.names:
			r.setNames(ctx, wg, names, dirty)
		case res := <-r.results:
			r.apply(res, dirty)
		}
		// Take everything already queued before publishing once.
	drain:
		for {
			select {
			case names := <-r.names:
				r.setNames(ctx, wg, names, dirty)
			case res := <-r.results:
				r.apply(res, dirty)
			default:
				break drain
			}
		}
		r.publish(dirty)
	}
}

func (r *run) setNames(ctx context.Context, wg *sync.WaitGroup, names map[string]struct{}, dirty map[string]bool) {
	r.listed = true
	for name, stop := range r.watching {
		if _, ok := names[name]; !ok {
			stop()
			delete(r.watching, name)
			delete(r.entries, name)
			delete(r.pending, name)
			dirty[name] = true
			r.s.dropStatus(healthPath(name))
		}
	}
	for name := range names {
		if _, ok := r.watching[name]; ok {
			continue
		}
		wctx, stop := context.WithCancel(ctx)
		r.watching[name] = stop
		r.pending[name] = true
		wg.Go(func() { r.watchService(wctx, name) })
	}
}

func (r *run) apply(res result, dirty map[string]bool) {
	if _, ok := r.watching[res.name]; !ok {
		return // a late answer for a service that is gone
	}
	delete(r.pending, res.name)
	if res.err == nil {
		r.entries[res.name] = res.entries
		dirty[res.name] = true
	}
}

// publish rebuilds the services of the dirty Consul names and reports the
// full state if anything differs from the last report.
func (r *run) publish(dirty map[string]bool) {
	if !r.listed || len(r.pending) > 0 {
		return
	}
	changed := !r.synced
	for name := range dirty {
		entries, ok := r.entries[name]
		if !ok {
			if len(r.services[name]) > 0 {
				changed = true
			}
			delete(r.services, name)
			continue
		}
		built := r.s.build(name, entries)
		for i, svc := range built {
			if old, ok := r.prev[svc.Key()]; ok && old.DefinitionHash() == svc.DefinitionHash() && old.EndpointHash() == svc.EndpointHash() {
				built[i] = old
			}
		}
		if !slices.Equal(built, r.services[name]) {
			changed = true
		}
		r.services[name] = built
	}
	if !changed {
		return
	}
	var all []*model.Service
	next := map[model.Key]*model.Service{}
	for _, name := range slices.Sorted(maps.Keys(r.services)) {
		for _, svc := range r.services[name] {
			if _, dup := next[svc.Key()]; dup {
				// Two Consul services claim one host name through meta;
				// the first by name keeps it.
				r.s.log.Warn("consul services share a host name; keeping the first", "host", svc.Hostname, "namespace", svc.Namespace, "service", name)
				continue
			}
			next[svc.Key()] = svc
			all = append(all, svc)
		}
	}
	r.prev = next
	r.synced = true
	r.s.metrics.updates.Inc()
	r.sink.Update(registry.State{Services: all})
}

const catalogPath = "/v1/catalog/services"

func healthPath(name string) string { return "/v1/health/service/" + name }

// watchCatalog keeps r.names up to date with the services to watch.
func (r *run) watchCatalog(ctx context.Context) {
	r.s.watch(ctx, catalogPath, "catalog", func(q *api.QueryOptions) (uint64, error) {
		list, meta, err := r.s.client.Catalog().Services(q)
		if err != nil {
			return 0, err
		}
		names := map[string]struct{}{}
		for name := range list {
			if r.s.wanted(name) {
				names[name] = struct{}{}
			}
		}
		// Latest value wins: replace whatever the loop has not read yet.
		select {
		case <-r.names:
		default:
		}
		r.names <- names
		return meta.LastIndex, nil
	}, func(err error) {})
}

// watchService reports the instances of one service on every change. Its
// first failure is reported too, so one unreadable service (an ACL that
// hides it) does not hold back the first state forever.
func (r *run) watchService(ctx context.Context, name string) {
	first := true
	send := func(res result) {
		select {
		case r.results <- res:
		case <-ctx.Done():
		}
	}
	r.s.watch(ctx, healthPath(name), "health", func(q *api.QueryOptions) (uint64, error) {
		entries, meta, err := r.s.client.Health().Service(name, "", false, q)
		if err != nil {
			return 0, err
		}
		first = false
		send(result{name: name, entries: entries})
		return meta.LastIndex, nil
	}, func(err error) {
		if first {
			first = false
			send(result{name: name, err: err})
		}
	})
}

func (s *Source) wanted(name string) bool {
	if slices.Contains(s.cfg.ExcludeServices, name) {
		return false
	}
	return len(s.cfg.Services) == 0 || slices.Contains(s.cfg.Services, name)
}

// watch runs one blocking-query loop until ctx ends. query performs the
// request with the given options, delivers its answer and returns Consul's
// index; onErr sees each failure.
func (s *Source) watch(ctx context.Context, path, kind string, query func(*api.QueryOptions) (uint64, error), onErr func(error)) {
	var index uint64
	var last time.Time
	backoff := time.Duration(0)
	for {
		// Rate-limit wakeups: a catalog that changes all the time gets
		// read at most once per minInterval (jittered), never in a spin.
		if wait := s.cfg.MinInterval - time.Since(last); wait > 0 && !last.IsZero() {
			if !sleep(ctx, wait+rand.N(wait/4+1)) {
				return
			}
		}
		last = time.Now()
		q := (&api.QueryOptions{
			WaitIndex:  index,
			WaitTime:   s.cfg.WaitTime,
			AllowStale: s.cfg.AllowStale,
			Datacenter: s.cfg.Datacenter,
		}).WithContext(ctx)
		s.metrics.queries.WithLabelValues(kind).Inc()
		s.status(path, func(w *WatchStatus) { w.Queries++; w.LastWake = last })
		next, err := query(q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.metrics.errors.WithLabelValues(kind).Inc()
			s.status(path, func(w *WatchStatus) { w.Errors++; w.LastError = err.Error() })
			onErr(err)
			backoff = min(max(2*backoff, 250*time.Millisecond), s.cfg.MaxBackoff)
			d := backoff/2 + rand.N(backoff/2+1)
			s.log.Warn("consul query failed; retrying", "path", path, "err", err, "retry", d)
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		backoff = 0
		switch {
		case next < index:
			// Consul's index went backwards (restore, new cluster): start
			// over, or the next query would wait for an index that may
			// never come.
			s.log.Info("consul index went backwards; resetting", "path", path, "from", index, "to", next)
			index = 0
		case next == 0:
			// Never block on 0: it returns at once and would spin.
			index = 1
		default:
			if next != index {
				s.status(path, func(w *WatchStatus) { w.Changes++ })
			}
			index = next
		}
		s.status(path, func(w *WatchStatus) { w.Index = index; w.LastError = "" })
	}
}

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

// build converts one Consul service's instances to model services, one per
// (host name, namespace) its instances claim.
func (s *Source) build(name string, entries []*api.ServiceEntry) []*model.Service {
	byKey := map[model.Key]*model.Service{}
	ports := map[model.Key]map[uint32]model.Port{}
	for _, e := range entries {
		if e.Service == nil || e.Node == nil {
			continue
		}
		if e.Service.Kind != api.ServiceKindTypical {
			continue // Connect proxies and gateways are not workloads
		}
		meta := e.Service.Meta
		host := cmp.Or(meta[MetaHostname], name+".service."+s.cfg.Domain)
		ns := cmp.Or(meta[MetaNamespace], s.cfg.Namespace)
		k := model.Key{Hostname: host, Namespace: ns}
		svc := byKey[k]
		if svc == nil {
			svc = &model.Service{Hostname: host, Namespace: ns, Source: SourceName, Resolution: model.ResolutionStatic}
			byKey[k] = svc
			ports[k] = map[uint32]model.Port{}
		}
		port := uint32(e.Service.Port)
		if port == 0 {
			continue
		}
		svcPort := port
		if p, err := strconv.ParseUint(meta[MetaPort], 10, 16); err == nil && p > 0 {
			svcPort = uint32(p)
		}
		proto := model.ProtocolTCP
		if p := meta[MetaProtocol]; p != "" {
			proto = model.ParseProtocol(p)
		}
		if _, ok := ports[k][svcPort]; !ok {
			ports[k][svcPort] = model.Port{
				Name:     strings.ToLower(string(proto)) + "-" + strconv.Itoa(int(svcPort)),
				Number:   svcPort,
				Protocol: proto,
			}
		}
		addr := cmp.Or(e.Service.Address, e.Node.Address)
		if ip := net.ParseIP(addr); ip == nil {
			continue // a host name; static resolution needs IPs
		}
		health := model.Healthy
		if e.Checks.AggregatedStatus() != api.HealthPassing {
			health = model.Unhealthy
		}
		dc := cmp.Or(e.Node.Datacenter, e.Service.Datacenter, s.cfg.Datacenter)
		zone := ""
		if e.Service.Locality != nil {
			zone = e.Service.Locality.Zone
		} else if e.Node.Locality != nil {
			zone = e.Node.Locality.Zone
		}
		svc.Endpoints = append(svc.Endpoints, &model.Endpoint{
			Address:        addr,
			Port:           port,
			ServicePort:    svcPort,
			Labels:         labels(e.Service.Tags, meta),
			Locality:       model.Locality{Region: dc, Zone: zone},
			Weight:         uint32(max(e.Service.Weights.Passing, 0)),
			Health:         health,
			Namespace:      ns,
			ServiceAccount: cmp.Or(meta[MetaServiceAccount], name),
			Workload:       e.Node.Node + "/" + e.Service.ID,
		})
	}
	out := make([]*model.Service, 0, len(byKey))
	for k, svc := range byKey {
		for _, p := range ports[k] {
			svc.Ports = append(svc.Ports, p)
		}
		out = append(out, svc.Finalize())
	}
	slices.SortFunc(out, func(a, b *model.Service) int {
		return cmp.Or(cmp.Compare(a.Hostname, b.Hostname), cmp.Compare(a.Namespace, b.Namespace))
	})
	return out
}

// labels turns tags and meta into endpoint labels: "k=v" tags split at the
// first "=", bare tags map to "", and meta wins over tags.
func labels(tags []string, meta map[string]string) map[string]string {
	if len(tags)+len(meta) == 0 {
		return nil
	}
	out := make(map[string]string, len(tags)+len(meta))
	for _, t := range tags {
		k, v, _ := strings.Cut(t, "=")
		if k != "" {
			out[k] = v
		}
	}
	maps.Copy(out, meta)
	return out
}

type metrics struct {
	queries *prometheus.CounterVec
	errors  *prometheus.CounterVec
	updates prometheus.Counter
}

// Metric names.
const (
	metricQueries = "meshd_consul_queries_total"
	metricErrors  = "meshd_consul_query_errors_total"
	metricUpdates = "meshd_consul_updates_total"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricQueries, Help: "Consul blocking queries started, by watch kind (catalog, health)."}, []string{"watch"}),
		errors:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricErrors, Help: "Consul queries that failed, by watch kind."}, []string{"watch"}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{Name: metricUpdates, Help: "Consul source states reported to the registry."}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.queries, err = register(reg, m.queries); err != nil {
		return nil, err
	}
	if m.errors, err = register(reg, m.errors); err != nil {
		return nil, err
	}
	if m.updates, err = register(reg, m.updates); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name (a source restarted in the same process).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("consul metrics: %w", err)
	}
	return c, nil
}
