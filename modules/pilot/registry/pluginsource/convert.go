package pluginsource

import (
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"strings"

	discoveryv1 "github.com/meshd/meshd/core/plugin/proto/discovery/v1"
	"github.com/meshd/meshd/modules/pilot/model"
)

// chunkEndpoints is how many endpoints (or endpoint-less services) go into
// one StateChunk: a few hundred kilobytes, well below any message limit.
const chunkEndpoints = 1000

// Limits on one state from a plugin. A plugin that sends more is cut off
// with an error rather than allowed to grow meshd's memory without bound.
const (
	maxLabels = 64
	maxString = 1024
)

// Limits on the size of one state; variables so tests can lower them.
var (
	maxServices  = 200_000
	maxEndpoints = 2_000_000
)

// encoder turns states into chunks on the plugin side. It remembers the
// message of each service it converted last time, keyed by the service's
// pointer, so an unchanged service (sources reuse the pointers of what did
// not change) is not converted again.
type encoder struct {
	prev map[*model.Service]*discoveryv1.Service
}

func (e *encoder) chunks(gen uint64, services []*model.Service) []*discoveryv1.StateChunk {
	next := make(map[*model.Service]*discoveryv1.Service, len(services))
	var out []*discoveryv1.StateChunk
	cur := &discoveryv1.StateChunk{Generation: gen}
	budget := chunkEndpoints
	flush := func() {
		if len(cur.Services) > 0 {
			out = append(out, cur)
			cur = &discoveryv1.StateChunk{Generation: gen}
		}
		budget = chunkEndpoints
	}
	for _, s := range services {
		if s == nil {
			continue
		}
		ps, ok := e.prev[s]
		if !ok {
			ps = serviceToProto(s)
		}
		next[s] = ps
		n := max(1, len(ps.Endpoints))
		if n <= chunkEndpoints {
			if n > budget {
				flush()
			}
			cur.Services = append(cur.Services, ps)
			budget -= n
			continue
		}
		// Too many endpoints for one chunk: the definition with the first
		// part, then continuation entries, each in a chunk of its own.
		flush()
		head := shallowService(ps)
		head.Endpoints = ps.Endpoints[:chunkEndpoints]
		cur.Services = append(cur.Services, head)
		for eps := ps.Endpoints[chunkEndpoints:]; len(eps) > 0; {
			flush()
			k := min(len(eps), chunkEndpoints)
			cur.Services = append(cur.Services, &discoveryv1.Service{Hostname: ps.Hostname, Namespace: ps.Namespace, Continued: true, Endpoints: eps[:k]})
			eps = eps[k:]
			budget -= k
		}
	}
	cur.Last = true
	out = append(out, cur)
	e.prev = next
	return out
}

func shallowService(ps *discoveryv1.Service) *discoveryv1.Service {
	return &discoveryv1.Service{
		Hostname: ps.Hostname, Namespace: ps.Namespace, Ports: ps.Ports, Addresses: ps.Addresses,
		Resolution: ps.Resolution, MeshExternal: ps.MeshExternal, ExportTo: ps.ExportTo, Labels: ps.Labels,
		Profiles: ps.Profiles,
	}
}

// profileKey identifies what endpoints may share, with the labels by a
// hash (equal hashes are checked with maps.Equal).
type profileKey struct {
	locality           model.Locality
	namespace, sa, net string
	weight             uint32
	health             model.Health
	labels             uint64
}

var labelSeed = maphash.MakeSeed()

// labelsHash is an order-independent hash of a label map, computed without
// allocating.
func labelsHash(m map[string]string) uint64 {
	var sum uint64
	var h maphash.Hash
	h.SetSeed(labelSeed)
	for k, v := range m {
		h.Reset()
		h.WriteString(k)
		h.WriteByte(0)
		h.WriteString(v)
		sum += h.Sum64()
	}
	return sum
}

func serviceToProto(s *model.Service) *discoveryv1.Service {
	ps := &discoveryv1.Service{
		Hostname:     s.Hostname,
		Namespace:    s.Namespace,
		Addresses:    s.Addresses,
		Resolution:   discoveryv1.Resolution(s.Resolution),
		MeshExternal: s.MeshExternal,
		ExportTo:     s.ExportTo,
		Labels:       s.Labels,
		Ports:        make([]*discoveryv1.Port, len(s.Ports)),
		Endpoints:    make([]*discoveryv1.Endpoint, len(s.Endpoints)),
	}
	for i, p := range s.Ports {
		ps.Ports[i] = &discoveryv1.Port{Name: p.Name, Number: p.Number, Protocol: string(p.Protocol), TargetPort: p.TargetPort}
	}
	// Endpoints usually share most of their attributes (a few label sets,
	// one locality, one service account): each distinct combination is sent
	// once as a profile, which makes the message smaller and its decoding on
	// the host much cheaper.
	profiles := map[profileKey][]uint32{}
	eps := make([]discoveryv1.Endpoint, len(s.Endpoints))
	for i, e := range s.Endpoints {
		pe := &eps[i]
		pe.Address, pe.Port, pe.ServicePort, pe.Workload = e.Address, e.Port, e.ServicePort, e.Workload
		k := profileKey{locality: e.Locality, namespace: e.Namespace, sa: e.ServiceAccount, net: e.Network, weight: e.Weight, health: e.Health, labels: labelsHash(e.Labels)}
		for _, n := range profiles[k] {
			if maps.Equal(ps.Profiles[n-1].Labels, e.Labels) {
				pe.Profile = n
				break
			}
		}
		if pe.Profile == 0 {
			pp := &discoveryv1.EndpointProfile{Labels: e.Labels, Weight: e.Weight, Health: discoveryv1.Health(e.Health),
				Namespace: e.Namespace, ServiceAccount: e.ServiceAccount, Network: e.Network}
			if e.Locality != (model.Locality{}) {
				pp.Locality = e.Locality.String()
			}
			ps.Profiles = append(ps.Profiles, pp)
			pe.Profile = uint32(len(ps.Profiles))
			profiles[k] = append(profiles[k], pe.Profile)
		}
		ps.Endpoints[i] = pe
	}
	return ps
}

// decoder turns chunks into services on the host side. The plugin is not
// trusted: every value is checked, and a service that fails a check is
// dropped (and reported) rather than passed to pilot. Services are
// converted as their chunks arrive, while the plugin sends the next ones.
type decoder struct {
	source string
	// prev holds the services of the last state by key; a service that
	// decodes to the same hashes is replaced by its previous pointer, so
	// pilot sees "unchanged".
	prev map[model.Key]*model.Service

	gen       uint64
	started   bool
	services  int
	endpoints int
	// last is the service of the previous entry, which a continuation may
	// extend; lastOwned says it is a copy that may grow.
	last      *discoveryv1.Service
	lastOwned bool
	out       []*model.Service
	problems  []error
}

func (d *decoder) reset() {
	d.started, d.services, d.endpoints = false, 0, 0
	d.last, d.lastOwned, d.out, d.problems = nil, false, nil, nil
}

// add takes one chunk. It returns the finished state (and the problems
// found in it) when the chunk is the last of its state.
func (d *decoder) add(c *discoveryv1.StateChunk) (services []*model.Service, problems []error, done bool, err error) {
	if !d.started {
		d.started, d.gen = true, c.GetGeneration()
	} else if c.GetGeneration() != d.gen {
		return nil, nil, false, fmt.Errorf("chunk of state %d while state %d is incomplete", c.GetGeneration(), d.gen)
	}
	for _, ps := range c.GetServices() {
		d.endpoints += len(ps.GetEndpoints())
		if !ps.GetContinued() {
			d.services++
			d.flush()
			d.last, d.lastOwned = ps, false
			continue
		}
		if d.last == nil || d.last.GetHostname() != ps.GetHostname() || d.last.GetNamespace() != ps.GetNamespace() {
			d.problems = append(d.problems, fmt.Errorf("service %s/%s: continuation without its service", ps.GetNamespace(), ps.GetHostname()))
			continue
		}
		// Messages from the wire are not modified: the service is copied
		// before its endpoints grow.
		if !d.lastOwned {
			cp := shallowService(d.last)
			cp.Endpoints = slices.Clone(d.last.GetEndpoints())
			d.last, d.lastOwned = cp, true
		}
		d.last.Endpoints = append(d.last.Endpoints, ps.GetEndpoints()...)
	}
	if d.services > maxServices || d.endpoints > maxEndpoints {
		err := fmt.Errorf("state %d is larger than %d services or %d endpoints", d.gen, maxServices, maxEndpoints)
		d.reset()
		return nil, nil, false, err
	}
	if !c.GetLast() {
		return nil, nil, false, nil
	}
	d.flush()
	services, problems = d.finish()
	return services, problems, true, nil
}

// flush converts the pending service.
func (d *decoder) flush() {
	if d.last == nil {
		return
	}
	s, err := serviceFromProto(d.last, d.source)
	d.last, d.lastOwned = nil, false
	if err != nil {
		d.problems = append(d.problems, err)
		return
	}
	d.out = append(d.out, s)
}

// finish drops duplicates and reuses the pointers of unchanged services.
func (d *decoder) finish() ([]*model.Service, []error) {
	converted, problems := d.out, d.problems
	d.reset()
	next := make(map[model.Key]*model.Service, len(converted))
	out := converted[:0]
	for _, s := range converted {
		k := s.Key()
		if _, dup := next[k]; dup {
			problems = append(problems, fmt.Errorf("service %s/%s: reported twice; keeping the first", k.Namespace, k.Hostname))
			continue
		}
		if p, ok := d.prev[k]; ok && p.DefinitionHash() == s.DefinitionHash() && p.EndpointHash() == s.EndpointHash() {
			s = p
		}
		next[k] = s
		out = append(out, s)
	}
	d.prev = next
	return out, problems
}

func checkString(what, s string) error {
	if len(s) > maxString {
		return fmt.Errorf("%s is longer than %d bytes", what, maxString)
	}
	return nil
}

func checkAttrs(fields ...string) error {
	for _, f := range fields {
		if err := checkString("endpoint field", f); err != nil {
			return err
		}
	}
	return nil
}

func checkLabels(what string, m map[string]string) error {
	if len(m) > maxLabels {
		return fmt.Errorf("%s: more than %d labels", what, maxLabels)
	}
	for k, v := range m {
		if k == "" || len(k) > 317 || len(v) > maxString {
			return fmt.Errorf("%s: label %.40q is not a valid label", what, k)
		}
	}
	return nil
}

func serviceFromProto(ps *discoveryv1.Service, source string) (*model.Service, error) {
	host, ns := ps.GetHostname(), ps.GetNamespace()
	fail := func(format string, args ...any) (*model.Service, error) {
		return nil, fmt.Errorf("service %s/%s: %s", ns, host, fmt.Sprintf(format, args...))
	}
	if host == "" || len(host) > 253 || strings.ContainsAny(host, " /\t\n") {
		return fail("hostname %.60q is not a host name", host)
	}
	if ns == "" || len(ns) > 63 {
		return fail("namespace %q must be 1-63 characters", ns)
	}
	if r := ps.GetResolution(); r < discoveryv1.Resolution_RESOLUTION_STATIC || r > discoveryv1.Resolution_RESOLUTION_NONE {
		return fail("unknown resolution %d", r)
	}
	if err := checkLabels("labels", ps.GetLabels()); err != nil {
		return fail("%v", err)
	}
	s := &model.Service{
		Hostname:     host,
		Namespace:    ns,
		Resolution:   model.Resolution(ps.GetResolution()),
		MeshExternal: ps.GetMeshExternal(),
		Source:       source,
	}
	// Messages decoded from the wire belong to this decoder alone, so
	// their maps are used as they are rather than copied.
	if len(ps.GetLabels()) > 0 {
		s.Labels = ps.GetLabels()
	}
	for _, a := range ps.GetAddresses() {
		if _, err := netip.ParseAddr(a); err != nil {
			if _, err := netip.ParsePrefix(a); err != nil {
				return fail("address %.60q is not an IP address or CIDR", a)
			}
		}
		s.Addresses = append(s.Addresses, a)
	}
	for _, e := range ps.GetExportTo() {
		if err := checkString("exportTo", e); err != nil {
			return fail("%v", err)
		}
		s.ExportTo = append(s.ExportTo, e)
	}
	ports := map[uint32]model.Port{}
	for _, pp := range ps.GetPorts() {
		p := model.Port{Name: pp.GetName(), Number: pp.GetNumber(), Protocol: model.ParseProtocol(pp.GetProtocol()), TargetPort: pp.GetTargetPort()}
		if pp.GetProtocol() == "" {
			p.Protocol = model.ProtocolFromPortName(p.Name)
		}
		if p.Number == 0 || p.Number > 65535 || p.TargetPort > 65535 {
			return fail("port %d (target %d) out of range", p.Number, p.TargetPort)
		}
		if err := checkString("port name", p.Name); err != nil {
			return fail("%v", err)
		}
		if _, dup := ports[p.Number]; dup {
			return fail("port %d declared twice", p.Number)
		}
		ports[p.Number] = p
		s.Ports = append(s.Ports, p)
	}
	if len(s.Ports) == 0 {
		return fail("no ports")
	}
	profiles := make([]model.Endpoint, len(ps.GetProfiles()))
	for i, pp := range ps.GetProfiles() {
		p := &profiles[i]
		if err := checkLabels(fmt.Sprintf("profile %d", i+1), pp.GetLabels()); err != nil {
			return fail("%v", err)
		}
		if err := checkAttrs(pp.GetLocality(), pp.GetNamespace(), pp.GetServiceAccount(), pp.GetNetwork()); err != nil {
			return fail("profile %d: %v", i+1, err)
		}
		if h := pp.GetHealth(); h < discoveryv1.Health_HEALTH_HEALTHY || h > discoveryv1.Health_HEALTH_DRAINING {
			return fail("profile %d: unknown health %d", i+1, h)
		}
		// Messages decoded from the wire belong to this decoder alone, so
		// their maps are used as they are rather than copied.
		if len(pp.GetLabels()) > 0 {
			p.Labels = pp.GetLabels()
		}
		if l := pp.GetLocality(); l != "" {
			p.Locality = model.ParseLocality(l)
		}
		p.Weight, p.Health = pp.GetWeight(), model.Health(pp.GetHealth())
		p.Namespace, p.ServiceAccount, p.Network = pp.GetNamespace(), pp.GetServiceAccount(), pp.GetNetwork()
	}
	s.Endpoints = make([]*model.Endpoint, 0, len(ps.GetEndpoints()))
	block := make([]model.Endpoint, len(ps.GetEndpoints()))
	for i, pe := range ps.GetEndpoints() {
		sp, ok := ports[pe.GetServicePort()]
		if !ok {
			return fail("endpoint %s serves port %d, which the service does not have", pe.GetAddress(), pe.GetServicePort())
		}
		e := &block[i]
		if n := pe.GetProfile(); n > 0 {
			if int(n) > len(profiles) {
				return fail("endpoint %s: profile %d of %d", pe.GetAddress(), n, len(profiles))
			}
			*e = profiles[n-1]
		} else {
			if h := pe.GetHealth(); h < discoveryv1.Health_HEALTH_HEALTHY || h > discoveryv1.Health_HEALTH_DRAINING {
				return fail("endpoint %s: unknown health %d", pe.GetAddress(), h)
			}
			if err := checkLabels("endpoint "+pe.GetAddress(), pe.GetLabels()); err != nil {
				return fail("%v", err)
			}
			if err := checkAttrs(pe.GetLocality(), pe.GetNamespace(), pe.GetServiceAccount(), pe.GetNetwork()); err != nil {
				return fail("endpoint %s: %v", pe.GetAddress(), err)
			}
			if len(pe.GetLabels()) > 0 {
				e.Labels = pe.GetLabels()
			}
			if l := pe.GetLocality(); l != "" {
				e.Locality = model.ParseLocality(l)
			}
			e.Weight, e.Health = pe.GetWeight(), model.Health(pe.GetHealth())
			e.Namespace, e.ServiceAccount, e.Network = pe.GetNamespace(), pe.GetServiceAccount(), pe.GetNetwork()
		}
		e.Address, e.Port, e.ServicePort, e.Workload = pe.GetAddress(), pe.GetPort(), pe.GetServicePort(), pe.GetWorkload()
		if e.Address == "" {
			return fail("endpoint without an address")
		}
		if s.Resolution == model.ResolutionStatic {
			if _, err := netip.ParseAddr(e.Address); err != nil {
				return fail("endpoint %.60q is not an IP address (resolution STATIC)", e.Address)
			}
		} else if err := checkString("endpoint address", e.Address); err != nil {
			return fail("%v", err)
		}
		if err := checkString("workload", e.Workload); err != nil {
			return fail("endpoint %s: %v", e.Address, err)
		}
		if e.Port == 0 {
			e.Port = sp.TargetPort
			if e.Port == 0 {
				e.Port = sp.Number
			}
		}
		if e.Port > 65535 {
			return fail("endpoint %s port %d out of range", e.Address, e.Port)
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s.Finalize(), nil
}

var errEnded = errors.New("the plugin ended its discovery stream")
