// Package autoregister is meshd's workload self-registration, the
// "autoregister" module: a VM whose meshd agent connects to the xDS TLS
// port becomes an endpoint of the services that select it, as Istio's
// WorkloadGroup auto-registration does, and stops being one a grace period
// after the agent goes away.
//
// The agent's xDS stream is the registration. Its node metadata declares
// the workload (name, labels, ports, the WorkloadGroup it joins); the
// module reads it from the xds module's xds.proxy.connected events and
// checks it against the WorkloadGroup before it calls pilot's Registrar:
//
//   - the stream's identity must come from a verified client certificate
//     (claimed metadata never registers anything), and the group is looked
//     up in the certificate's namespace;
//   - the certificate's service account must be the group template's
//     (Kubernetes' "default" when the template names none);
//   - the agent's labels may add to the template's labels (group metadata
//     and template) but never change one;
//   - when the template lists ports, the agent may only declare those port
//     names (with its own numbers);
//   - the address is the agent's declared instance IP; the template must
//     not fix one.
//
// A refusal is logged, counted and shown on /debug/autoregisterz, and told
// to the agent in its next health report. Config changes re-check every
// connected agent, so fixing a WorkloadGroup registers waiting agents and
// deleting one deregisters its workloads.
//
// Health comes from the agent's local probe over the WorkloadHealth service
// (healthpb), served on the TLS port only. A workload whose agent probes
// starts unhealthy until the first report.
//
// pilot's own module is not touched: this module takes pilot's Registrar,
// galley's accepted config and the xds module through core.Dep, and is
// inert when any of them is disabled.
package autoregister

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/bus"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/modules/pilot/autoregister/healthpb"
	xdsapi "github.com/meshd/meshd/xds/api"
	"google.golang.org/grpc"
	networking "istio.io/api/networking/v1alpha3"
)

// ID is the module ID and the key of its config section
// (modules.autoregister).
const ID core.ModuleID = "autoregister"

func init() { core.Register(new(Module)) }

// Node metadata keys a meshd agent sets on its xDS stream. The first two
// are Istio's, so an Istio agent that names its group is understood too.
const (
	// MetaGroup names the WorkloadGroup (in the certificate's namespace)
	// the workload joins. Streams without it are not registrations.
	MetaGroup = "AUTO_REGISTER_GROUP"
	// MetaWorkloadName is the workload's name; the node ID's name part
	// when absent.
	MetaWorkloadName = "WORKLOAD_NAME"
	// MetaNetwork is the workload's network.
	MetaNetwork = "NETWORK"
	// MetaPorts lists the workload's ports as name=port pairs separated by
	// commas: "grpc=8080,http=9090".
	MetaPorts = "MESHD_WORKLOAD_PORTS"
	// MetaProbe names the agent's probe (tcp, http, grpc) when it probes the
	// workload; the workload then starts unhealthy until the first report.
	MetaProbe = "MESHD_HEALTH_PROBE"
)

// Config is the modules.autoregister section.
type Config struct {
	GracePeriod time.Duration `mapstructure:"gracePeriod" doc:"how long a workload stays registered after its agent's last xDS stream ended; an agent that reconnects within it keeps its endpoint"`
	MaxPending  int           `mapstructure:"maxPending" doc:"health reports kept for workloads whose xDS stream meshd has not seen (yet); more are not remembered"`
}

// Default returns the defaults: Istio's 10 s grace period.
func Default() Config {
	return Config{GracePeriod: 10 * time.Second, MaxPending: 10000}
}

// Validate checks values decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.GracePeriod < 0 {
		errs = append(errs, errors.New("modules.autoregister.gracePeriod: must not be negative"))
	}
	if c.MaxPending < 0 {
		errs = append(errs, errors.New("modules.autoregister.maxPending: must not be negative"))
	}
	return errors.Join(errs...)
}

// xdsServer is what the module uses of the xds module.
type xdsServer interface {
	xdsapi.ServiceRegistry
	xdsapi.StatusSource
}

// Module is the autoregister module.
type Module struct {
	cfg    *Config
	log    *slog.Logger
	reg    pilotapi.Registrar
	galley galleyapi.Accepted
	xds    xdsServer
	sub    *bus.Subscription
	m      *metrics
	now    func() time.Time

	mu      sync.Mutex
	entries map[wkey]*entry
	conns   map[string]*agentConn // by xDS connection ID
	seq     uint64                // orders streams, newest highest
	kick    chan struct{}
}

var (
	_ core.Provisioner  = (*Module)(nil)
	_ core.Runner       = (*Module)(nil)
	_ core.CleanerUpper = (*Module)(nil)
)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:          ID,
		New:         func() core.Module { return new(Module) },
		Uses:        []core.ModuleID{"pilot", "galley", "xds"},
		Config:      func() any { c := Default(); return &c },
		Description: "VM self-registration: a meshd agent's xDS stream registers its workload, checked against a WorkloadGroup, with health from the agent's probe",
	}
}

// Provision takes pilot's Registrar, galley's accepted config and the xds
// module, registers the health service on the TLS port, and subscribes to
// proxy connections. Without any of the three it does nothing.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	m.cfg, m.log = cfg, ctx.Logger()
	reg, err1 := core.Dep[pilotapi.Registrar](ctx, "pilot")
	gal, err2 := core.Dep[galleyapi.Accepted](ctx, "galley")
	x, err3 := core.Dep[xdsServer](ctx, "xds")
	if err := errors.Join(err1, err2, err3); err != nil {
		if errors.Is(err1, core.ErrModuleDisabled) || errors.Is(err2, core.ErrModuleDisabled) || errors.Is(err3, core.ErrModuleDisabled) {
			m.log.Info("workload self-registration is off: it needs the pilot, galley and xds modules", "reason", err)
			return nil
		}
		return err
	}
	m.m, err = newMetrics(ctx.Metrics())
	if err != nil {
		return err
	}
	m.setup(reg, gal, x, ctx.Bus(), time.Now)
	if err := x.RegisterService(func(r grpc.ServiceRegistrar) {
		healthpb.RegisterWorkloadHealthServer(r, &healthServer{m: m})
	}, true); err != nil {
		return fmt.Errorf("register the workload health service: %w", err)
	}
	ctx.HandleAdmin("GET /debug/autoregisterz", http.HandlerFunc(m.autoregisterz))
	return nil
}

// setup is Provision's wiring without the host, for tests.
func (m *Module) setup(reg pilotapi.Registrar, gal galleyapi.Accepted, x xdsServer, b *bus.Bus, now func() time.Time) {
	m.reg, m.galley, m.xds, m.now = reg, gal, x, now
	m.entries = map[wkey]*entry{}
	m.conns = map[string]*agentConn{}
	m.kick = make(chan struct{}, 1)
	// Subscribe now, not in Run: agents that connect between Provision and
	// Run must not be missed.
	m.sub = b.Subscribe(string(ID), xdsapi.TopicProxyConnected, xdsapi.TopicProxyDisconnected, galleyapi.TopicConfigAccepted)
}

// Run handles proxy connections, config changes and grace-period expiry
// until ctx ends.
func (m *Module) Run(ctx context.Context) error {
	if m.sub == nil {
		<-ctx.Done()
		return nil
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	ready := m.sub.Ready()
	for {
		m.mu.Lock()
		next := m.expireLocked()
		m.mu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(m.now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-ready:
			if !ok {
				ready = nil
				continue
			}
			m.handle(m.sub.Drain())
		case <-timer.C:
		case <-m.kick:
		}
	}
}

// Cleanup releases the subscription. Registrations are left to pilot,
// which stops with meshd.
func (m *Module) Cleanup() error {
	if m.sub != nil {
		m.sub.Close()
	}
	return nil
}

// wkey is a workload: namespace and name.
type wkey struct{ ns, name string }

func (k wkey) String() string { return k.ns + "/" + k.name }

// agentConn is one agent xDS stream that asked to be registered.
type agentConn struct {
	id    string
	key   wkey
	proxy *xdsapi.Proxy
	seq   uint64 // connection order, newest highest
}

// entry is one workload: its live streams, what is registered, and its
// health.
type entry struct {
	key   wkey
	conns map[string]*agentConn
	// registered is what pilot has now, nil when nothing.
	registered *pilotapi.Workload
	// refused says why the newest stream is not registered.
	refused string
	// health is the last report, nil before the first.
	health *health
	// removeAt is when the entry goes (grace period or an unclaimed
	// report); zero while a stream is connected.
	removeAt time.Time
}

type health struct {
	healthy bool
	message string
	at      time.Time
	sa      string // service account of the reporter
}

// handle applies a batch of bus events.
func (m *Module) handle(events []bus.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	recheck := false
	for _, ev := range events {
		switch ev := ev.(type) {
		case xdsapi.ProxyConnected:
			m.connectLocked(ev.ConnID, ev.Proxy)
		case xdsapi.ProxyDisconnected:
			m.disconnectLocked(ev.ConnID)
		case galleyapi.ConfigAccepted:
			recheck = true
		case bus.Resync:
			m.resyncLocked()
			recheck = true
		}
	}
	if recheck {
		for _, e := range m.entries {
			if len(e.conns) > 0 {
				m.evaluateLocked(e)
			}
		}
	}
}

func (m *Module) connectLocked(connID string, p *xdsapi.Proxy) {
	group := p.Metadata[MetaGroup]
	if group == "" {
		return // not a registration
	}
	name := p.Metadata[MetaWorkloadName]
	if name == "" {
		name = p.Name
	}
	m.seq++
	c := &agentConn{id: connID, key: wkey{p.Namespace, name}, proxy: p, seq: m.seq}
	m.conns[connID] = c
	e := m.entryLocked(c.key, true)
	e.conns[connID] = c
	e.removeAt = time.Time{}
	m.evaluateLocked(e)
}

func (m *Module) disconnectLocked(connID string) {
	c, ok := m.conns[connID]
	if !ok {
		return
	}
	delete(m.conns, connID)
	e := m.entries[c.key]
	if e == nil {
		return
	}
	delete(e.conns, connID)
	if len(e.conns) > 0 {
		m.evaluateLocked(e) // an older stream of the same workload may take over
		return
	}
	e.removeAt = m.now().Add(m.cfg.GracePeriod)
	if e.registered != nil {
		m.m.unregister.Inc()
		m.log.Info("agent disconnected; workload removed after the grace period unless it reconnects",
			"workload", e.key.String(), "grace", m.cfg.GracePeriod)
	}
	m.wake()
}

// resyncLocked drops streams the xds module no longer has, after the bus
// lost events. Connections it missed come back by themselves: an agent
// whose health report finds it unregistered reconnects.
func (m *Module) resyncLocked() {
	live := map[string]bool{}
	for _, st := range m.xds.Statuses() {
		live[st.ConnID] = true
	}
	for id := range m.conns {
		if !live[id] {
			m.disconnectLocked(id)
		}
	}
	m.log.Warn("missed xDS connection events (bus overflow); streams re-checked, agents re-register on their next health report")
}

// expireLocked removes entries whose time is up and returns the next
// deadline (zero for none).
func (m *Module) expireLocked() time.Time {
	now := m.now()
	var next time.Time
	for k, e := range m.entries {
		if len(e.conns) > 0 || e.removeAt.IsZero() {
			continue
		}
		if now.Before(e.removeAt) {
			if next.IsZero() || e.removeAt.Before(next) {
				next = e.removeAt
			}
			continue
		}
		if e.registered != nil {
			m.reg.DeregisterWorkload(k.ns, k.name)
			m.m.deletes.Inc()
			m.log.Info("workload deregistered: its agent did not come back within the grace period", "workload", k.String())
		}
		delete(m.entries, k)
	}
	m.m.workloads.Set(float64(m.countRegisteredLocked()))
	return next
}

func (m *Module) countRegisteredLocked() int {
	n := 0
	for _, e := range m.entries {
		if e.registered != nil {
			n++
		}
	}
	return n
}

func (m *Module) entryLocked(k wkey, create bool) *entry {
	e := m.entries[k]
	if e == nil && create {
		e = &entry{key: k, conns: map[string]*agentConn{}}
		m.entries[k] = e
	}
	return e
}

func (m *Module) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// current picks the stream that speaks for the workload: the newest one
// with the registered identity while such a stream is connected (so a
// second identity cannot take over a name in use), else the newest.
func (e *entry) current() (cur *agentConn, takeover *agentConn) {
	var newest, sameID *agentConn
	for _, c := range e.conns {
		if newest == nil || c.seq > newest.seq {
			newest = c
		}
		if e.registered != nil && c.proxy.ServiceAccount == e.registered.ServiceAccount && (sameID == nil || c.seq > sameID.seq) {
			sameID = c
		}
	}
	if sameID != nil && sameID != newest {
		return sameID, newest
	}
	return newest, nil
}

// evaluateLocked decides what pilot should have for e and tells it.
func (m *Module) evaluateLocked(e *entry) {
	c, other := e.current()
	if c == nil {
		return
	}
	if other != nil {
		m.log.Warn("workload name in use by another identity; keeping the registered one",
			"workload", e.key.String(), "registered", e.registered.ServiceAccount, "refused", other.proxy.Identity)
	}
	w, reason, err := permit(c.proxy, e.key.name, m.galley.Accepted())
	if err == nil {
		w.Healthy = c.proxy.Metadata[MetaProbe] == ""
		if e.health != nil && e.health.sa == c.proxy.ServiceAccount {
			w.Healthy = e.health.healthy
		}
		if e.registered != nil && sameWorkload(e.registered, w) {
			e.refused = ""
			return
		}
		if err = m.reg.RegisterWorkload(*w); err != nil {
			reason = "registrar"
		}
	}
	if err != nil {
		m.m.errors.Inc()
		m.m.refusals.WithLabelValues(reason).Inc()
		if msg := err.Error(); msg != e.refused {
			m.log.Warn("workload not registered", "workload", e.key.String(), "identity", c.proxy.Identity,
				"group", c.proxy.Metadata[MetaGroup], "reason", msg)
			e.refused = msg
		}
		if e.registered != nil {
			m.reg.DeregisterWorkload(e.key.ns, e.key.name)
			e.registered = nil
			m.m.deletes.Inc()
		}
		m.m.workloads.Set(float64(m.countRegisteredLocked()))
		return
	}
	if e.registered == nil {
		m.m.success.Inc()
		m.log.Info("workload registered", "workload", e.key.String(), "identity", c.proxy.Identity,
			"group", c.proxy.Metadata[MetaGroup], "address", w.Address, "healthy", w.Healthy)
	} else {
		m.m.updates.Inc()
	}
	e.registered, e.refused = w, ""
	m.m.workloads.Set(float64(m.countRegisteredLocked()))
}

func sameWorkload(a, b *pilotapi.Workload) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.Address == b.Address && maps.Equal(a.Labels, b.Labels) &&
		maps.Equal(a.Ports, b.Ports) && a.ServiceAccount == b.ServiceAccount && a.Locality == b.Locality &&
		a.Network == b.Network && a.Weight == b.Weight && a.Healthy == b.Healthy
}

// permit checks a stream's declaration against its WorkloadGroup and
// returns the workload to register, or a refusal: a short reason for the
// metric and the error for the log and the agent.
func permit(p *xdsapi.Proxy, name string, snap *galleyapi.Snapshot) (*pilotapi.Workload, string, error) {
	if !p.IdentityVerified {
		return nil, "unverified", errors.New("the stream's identity is not from a verified certificate: connect to the xDS TLS port with a certificate from meshd's CA")
	}
	group := p.Metadata[MetaGroup]
	obj, ok := snap.Get(galleyapi.MakeKey(galleyapi.KindWorkloadGroup, p.Namespace, group))
	if !ok {
		return nil, "no_group", fmt.Errorf("no WorkloadGroup %s/%s (the group is looked up in the certificate's namespace)", p.Namespace, group)
	}
	wg, ok := obj.Spec.(*networking.WorkloadGroup)
	if !ok {
		return nil, "no_group", fmt.Errorf("WorkloadGroup %s/%s: unexpected spec %T", p.Namespace, group, obj.Spec)
	}
	tmpl := wg.GetTemplate()
	sa := tmpl.GetServiceAccount()
	if sa == "" {
		sa = "default"
	}
	if p.ServiceAccount != sa {
		return nil, "service_account", fmt.Errorf("WorkloadGroup %s/%s admits service account %q; the certificate is for %q", p.Namespace, group, sa, p.ServiceAccount)
	}
	if tmpl.GetAddress() != "" {
		return nil, "template", fmt.Errorf("WorkloadGroup %s/%s: template.address must be empty; each workload brings its own", p.Namespace, group)
	}
	labels := map[string]string{}
	maps.Copy(labels, wg.GetMetadata().GetLabels())
	maps.Copy(labels, tmpl.GetLabels())
	fixed := maps.Clone(labels)
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		v := p.Labels[k]
		if fv, ok := fixed[k]; ok && fv != v {
			return nil, "labels", fmt.Errorf("label %s=%q conflicts with WorkloadGroup %s/%s, which sets %s=%q", k, v, p.Namespace, group, k, fv)
		}
		labels[k] = v
	}
	declared, err := ParsePorts(p.Metadata[MetaPorts])
	if err != nil {
		return nil, "ports", err
	}
	ports := maps.Clone(tmpl.GetPorts())
	if ports == nil {
		ports = map[string]uint32{}
	}
	if len(tmpl.GetPorts()) > 0 {
		for _, n := range slices.Sorted(maps.Keys(declared)) {
			if _, ok := tmpl.GetPorts()[n]; !ok {
				return nil, "ports", fmt.Errorf("port %q is not one of WorkloadGroup %s/%s's ports (%s)", n, p.Namespace, group,
					strings.Join(slices.Sorted(maps.Keys(tmpl.GetPorts())), ", "))
			}
		}
	}
	maps.Copy(ports, declared)
	if p.IP == "" {
		return nil, "address", errors.New("the stream declares no address (INSTANCE_IPS or the node ID's IP)")
	}
	w := &pilotapi.Workload{
		Name: name, Namespace: p.Namespace, Address: p.IP, Labels: labels, Ports: ports, ServiceAccount: sa,
		Locality: locality(p), Network: p.Metadata[MetaNetwork], Weight: tmpl.GetWeight(),
	}
	if w.Locality == "" {
		w.Locality = tmpl.GetLocality()
	}
	if w.Network == "" {
		w.Network = tmpl.GetNetwork()
	}
	if len(w.Labels) == 0 {
		w.Labels = nil
	}
	if len(w.Ports) == 0 {
		w.Ports = nil
	}
	if err := w.Validate(); err != nil {
		return nil, "invalid", err
	}
	return w, "", nil
}

// locality is the node's locality as region/zone/subzone.
func locality(p *xdsapi.Proxy) string {
	l := p.Node.GetLocality()
	if l == nil || l.GetRegion()+l.GetZone()+l.GetSubZone() == "" {
		return ""
	}
	return strings.TrimRight(l.GetRegion()+"/"+l.GetZone()+"/"+l.GetSubZone(), "/")
}

// ParsePorts reads MetaPorts: name=port pairs separated by commas.
func ParsePorts(s string) (map[string]uint32, error) {
	out := map[string]uint32{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		name, num, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.ParseUint(num, 10, 16)
		if !ok || name == "" || err != nil || n == 0 {
			return nil, fmt.Errorf("%s: %q is not name=port", MetaPorts, part)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%s: port %q declared twice", MetaPorts, name)
		}
		out[name] = uint32(n)
	}
	return out, nil
}

// FormatPorts renders ports for MetaPorts, sorted by name.
func FormatPorts(ports map[string]uint32) string {
	parts := make([]string, 0, len(ports))
	for _, n := range slices.Sorted(maps.Keys(ports)) {
		parts = append(parts, n+"="+strconv.FormatUint(uint64(ports[n]), 10))
	}
	return strings.Join(parts, ",")
}
