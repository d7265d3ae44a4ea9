package pluginsource

import (
	"errors"
	"fmt"
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
	}
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
	eps := make([]discoveryv1.Endpoint, len(s.Endpoints))
	for i, e := range s.Endpoints {
		pe := &eps[i]
		pe.Address, pe.Port, pe.ServicePort = e.Address, e.Port, e.ServicePort
		pe.Labels, pe.Weight, pe.Health = e.Labels, e.Weight, discoveryv1.Health(e.Health)
		pe.Namespace, pe.ServiceAccount, pe.Workload, pe.Network = e.Namespace, e.ServiceAccount, e.Workload, e.Network
		if e.Locality != (model.Locality{}) {
			pe.Locality = e.Locality.String()
		}
		ps.Endpoints[i] = pe
	}
	return ps
}

// decoder turns chunks into services on the host side. The plugin is not
// trusted: every value is checked, and a service that fails a check is
// dropped (and reported) rather than passed to pilot.
type decoder struct {
	source string
	// prev holds the services of the last state by key; a service that
	// decodes to the same hashes is replaced by its previous pointer, so
	// pilot sees "unchanged".
	prev map[model.Key]*model.Service

	gen       uint64
	pending   []*discoveryv1.Service
	endpoints int
}

// add takes one chunk. It returns the finished state (and the problems
// found in it) when the chunk is the last of its state.
func (d *decoder) add(c *discoveryv1.StateChunk) (services []*model.Service, problems []error, done bool, err error) {
	if len(d.pending) == 0 && d.endpoints == 0 {
		d.gen = c.GetGeneration()
	} else if c.GetGeneration() != d.gen {
		return nil, nil, false, fmt.Errorf("chunk of state %d while state %d is incomplete", c.GetGeneration(), d.gen)
	}
	for _, s := range c.GetServices() {
		d.endpoints += len(s.GetEndpoints())
	}
	d.pending = append(d.pending, c.GetServices()...)
	if len(d.pending) > maxServices || d.endpoints > maxEndpoints {
		return nil, nil, false, fmt.Errorf("state %d is larger than %d services or %d endpoints", d.gen, maxServices, maxEndpoints)
	}
	if !c.GetLast() {
		return nil, nil, false, nil
	}
	services, problems = d.finish()
	return services, problems, true, nil
}

func (d *decoder) finish() ([]*model.Service, []error) {
	pending := d.pending
	d.pending, d.endpoints = nil, 0
	// Join continuations to the service before them. Messages from the
	// wire are not modified: the service is copied before its endpoints
	// grow.
	var merged []*discoveryv1.Service
	var problems []error
	copied := false
	for _, ps := range pending {
		if !ps.GetContinued() {
			merged = append(merged, ps)
			copied = false
			continue
		}
		if len(merged) == 0 || merged[len(merged)-1].GetHostname() != ps.GetHostname() || merged[len(merged)-1].GetNamespace() != ps.GetNamespace() {
			problems = append(problems, fmt.Errorf("service %s/%s: continuation without its service", ps.GetNamespace(), ps.GetHostname()))
			continue
		}
		last := merged[len(merged)-1]
		if !copied {
			c := shallowService(last)
			c.Endpoints = slices.Clone(last.GetEndpoints())
			merged[len(merged)-1], last, copied = c, c, true
		}
		last.Endpoints = append(last.Endpoints, ps.GetEndpoints()...)
	}
	next := make(map[model.Key]*model.Service, len(merged))
	out := make([]*model.Service, 0, len(merged))
	for _, ps := range merged {
		s, err := serviceFromProto(ps, d.source)
		if err != nil {
			problems = append(problems, err)
			continue
		}
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
	if len(ps.GetLabels()) > 0 {
		s.Labels = maps.Clone(ps.GetLabels())
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
	s.Endpoints = make([]*model.Endpoint, 0, len(ps.GetEndpoints()))
	block := make([]model.Endpoint, len(ps.GetEndpoints()))
	for i, pe := range ps.GetEndpoints() {
		sp, ok := ports[pe.GetServicePort()]
		if !ok {
			return fail("endpoint %s serves port %d, which the service does not have", pe.GetAddress(), pe.GetServicePort())
		}
		e := &block[i]
		e.Address, e.Port, e.ServicePort = pe.GetAddress(), pe.GetPort(), pe.GetServicePort()
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
		if e.Port == 0 {
			e.Port = sp.TargetPort
			if e.Port == 0 {
				e.Port = sp.Number
			}
		}
		if e.Port > 65535 {
			return fail("endpoint %s port %d out of range", e.Address, e.Port)
		}
		if h := pe.GetHealth(); h < discoveryv1.Health_HEALTH_HEALTHY || h > discoveryv1.Health_HEALTH_DRAINING {
			return fail("endpoint %s: unknown health %d", e.Address, h)
		}
		e.Health = model.Health(pe.GetHealth())
		e.Weight = pe.GetWeight()
		if err := checkLabels("endpoint "+e.Address, pe.GetLabels()); err != nil {
			return fail("%v", err)
		}
		if len(pe.GetLabels()) > 0 {
			e.Labels = maps.Clone(pe.GetLabels())
		}
		for _, f := range []string{pe.GetLocality(), pe.GetNamespace(), pe.GetServiceAccount(), pe.GetWorkload(), pe.GetNetwork()} {
			if err := checkString("endpoint field", f); err != nil {
				return fail("endpoint %s: %v", e.Address, err)
			}
		}
		if l := pe.GetLocality(); l != "" {
			e.Locality = model.ParseLocality(l)
		}
		e.Namespace, e.ServiceAccount, e.Workload, e.Network = pe.GetNamespace(), pe.GetServiceAccount(), pe.GetWorkload(), pe.GetNetwork()
		s.Endpoints = append(s.Endpoints, e)
	}
	return s.Finalize(), nil
}

var errEnded = errors.New("the plugin ended its discovery stream")
