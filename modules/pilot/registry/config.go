package registry

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/modules/pilot/model"
	networking "istio.io/api/networking/v1alpha3"
)

// SourceConfig is the name of the source built from ServiceEntries and
// WorkloadEntries in the accepted config, plus workloads registered at run
// time.
const SourceConfig = "config"

// Workload is a workload that joined at run time through the registration
// API; the type lives in pilot's api package so the VM agent can use it.
type Workload = pilotapi.Workload

// ConfigSource serves services from config and registrations. It is fed
// from outside: SetConfig when galley accepts a revision, Register and
// Deregister from the registration API.
type ConfigSource struct {
	mu        sync.Mutex
	snap      *galleyapi.Snapshot
	workloads map[string]Workload // namespace/name -> workload
	prev      map[model.Key]*model.Service
	sink      Sink
}

// NewConfigSource returns an empty config source.
func NewConfigSource() *ConfigSource {
	return &ConfigSource{workloads: map[string]Workload{}, prev: map[model.Key]*model.Service{}}
}

// Run reports the current state and then each change until ctx ends.
func (c *ConfigSource) Run(ctx context.Context, sink Sink) error {
	c.mu.Lock()
	c.sink = sink
	c.publishLocked()
	c.mu.Unlock()
	<-ctx.Done()
	c.mu.Lock()
	c.sink = nil
	c.mu.Unlock()
	return nil
}

// SetConfig replaces the accepted config.
func (c *ConfigSource) SetConfig(s *galleyapi.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.snap = s
	c.publishLocked()
}

// Register adds or replaces a run-time workload.
func (c *ConfigSource) Register(w Workload) error {
	if err := w.Validate(); err != nil {
		return fmt.Errorf("register workload %s/%s: %w", w.Namespace, w.Name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.workloads[w.Namespace+"/"+w.Name] = w
	c.publishLocked()
	return nil
}

// Deregister removes a run-time workload; it reports whether it existed.
func (c *ConfigSource) Deregister(namespace, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := namespace + "/" + name
	if _, ok := c.workloads[k]; !ok {
		return false
	}
	delete(c.workloads, k)
	c.publishLocked()
	return true
}

// Workloads lists the registered workloads, sorted.
func (c *ConfigSource) Workloads() []Workload {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sortedWorkloads()
}

func (c *ConfigSource) publishLocked() {
	if c.sink == nil {
		return
	}
	services := BuildServices(c.snap, c.sortedWorkloads())
	// Keep the previous pointer of every service that did not change, so
	// the aggregate's Diff sees equality without hashing twice.
	next := make(map[model.Key]*model.Service, len(services))
	for i, s := range services {
		if old, ok := c.prev[s.Key()]; ok && old.DefinitionHash() == s.DefinitionHash() && old.EndpointHash() == s.EndpointHash() {
			services[i] = old
		}
		next[s.Key()] = services[i]
	}
	c.prev = next
	c.sink.Update(State{Services: services})
}

// sortedWorkloads lists the workloads; the caller holds c.mu.
func (c *ConfigSource) sortedWorkloads() []Workload {
	out := make([]Workload, 0, len(c.workloads))
	for _, w := range c.workloads {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b Workload) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// instance is a WorkloadEntry or registered workload that may back services.
type instance struct {
	name, namespace string
	address         string
	ports           map[string]uint32
	labels          map[string]string
	serviceAccount  string
	locality        string
	network         string
	weight          uint32
	health          model.Health
}

// BuildServices converts ServiceEntries to services, with endpoints from
// their inline endpoints or from the WorkloadEntries and registered
// workloads their workloadSelector matches in their namespace.
func BuildServices(snap *galleyapi.Snapshot, registered []Workload) []*model.Service {
	byNS := map[string][]instance{}
	for o := range snap.All(galleyapi.KindWorkloadEntry) {
		we, ok := o.Spec.(*networking.WorkloadEntry)
		if !ok {
			continue
		}
		in := fromWorkloadEntry(o.Name, o.Namespace, we)
		in.labels = mergeLabels(o.Labels, we.GetLabels())
		byNS[o.Namespace] = append(byNS[o.Namespace], in)
	}
	for _, w := range registered {
		h := model.Healthy
		if !w.Healthy {
			h = model.Unhealthy
		}
		byNS[w.Namespace] = append(byNS[w.Namespace], instance{
			name: w.Name, namespace: w.Namespace, address: w.Address, ports: w.Ports, labels: w.Labels,
			serviceAccount: w.ServiceAccount, locality: w.Locality, network: w.Network, weight: w.Weight, health: h,
		})
	}

	var out []*model.Service
	byLabel := map[string]map[string][]int{} // namespace -> "key=value" -> positions in byNS
	for o := range snap.All(galleyapi.KindServiceEntry) {
		se, ok := o.Spec.(*networking.ServiceEntry)
		if !ok {
			continue
		}
		var insts []instance
		if sel := se.GetWorkloadSelector().GetLabels(); se.GetWorkloadSelector() != nil {
			for _, i := range candidates(byLabel, byNS, o.Namespace, sel) {
				if in := byNS[o.Namespace][i]; model.LabelsMatch(sel, in.labels) {
					insts = append(insts, in)
				}
			}
		} else {
			for i, we := range se.GetEndpoints() {
				insts = append(insts, fromWorkloadEntry(fmt.Sprintf("%s[%d]", o.Name, i), o.Namespace, we))
			}
		}
		for _, host := range se.GetHosts() {
			out = append(out, serviceFromEntry(o, se, host, insts))
		}
	}
	return out
}

// candidates returns the positions of the instances in ns that may match
// sel: those carrying its rarest label, found in a per-namespace label
// index built on first use, rather than every instance of the namespace,
// which kept BuildServices quadratic in big namespaces.
func candidates(byLabel map[string]map[string][]int, byNS map[string][]instance, ns string, sel map[string]string) []int {
	insts := byNS[ns]
	if len(sel) == 0 {
		all := make([]int, len(insts))
		for i := range all {
			all[i] = i
		}
		return all
	}
	idx := byLabel[ns]
	if idx == nil {
		idx = map[string][]int{}
		for i, in := range insts {
			for k, v := range in.labels {
				idx[k+"="+v] = append(idx[k+"="+v], i)
			}
		}
		byLabel[ns] = idx
	}
	var best []int
	first := true
	for k, v := range sel {
		l := idx[k+"="+v]
		if first || len(l) < len(best) {
			best, first = l, false
		}
	}
	return best
}

func fromWorkloadEntry(name, ns string, we *networking.WorkloadEntry) instance {
	return instance{
		name: name, namespace: ns, address: we.GetAddress(), ports: we.GetPorts(), labels: we.GetLabels(),
		serviceAccount: we.GetServiceAccount(), locality: we.GetLocality(), network: we.GetNetwork(), weight: we.GetWeight(),
	}
}

func mergeLabels(meta, spec map[string]string) map[string]string {
	if len(meta) == 0 {
		return spec
	}
	out := make(map[string]string, len(meta)+len(spec))
	for k, v := range meta {
		out[k] = v
	}
	for k, v := range spec {
		out[k] = v
	}
	return out
}

func serviceFromEntry(o *galleyapi.Object, se *networking.ServiceEntry, host string, insts []instance) *model.Service {
	s := &model.Service{
		Hostname:     host,
		Namespace:    o.Namespace,
		Addresses:    slices.Clone(se.GetAddresses()),
		MeshExternal: se.GetLocation() == networking.ServiceEntry_MESH_EXTERNAL,
		ExportTo:     slices.Clone(se.GetExportTo()),
		Labels:       o.Labels,
		Source:       SourceConfig,
	}
	switch se.GetResolution() {
	case networking.ServiceEntry_DNS:
		s.Resolution = model.ResolutionDNS
	case networking.ServiceEntry_DNS_ROUND_ROBIN:
		s.Resolution = model.ResolutionDNSRoundRobin
	case networking.ServiceEntry_NONE:
		s.Resolution = model.ResolutionNone
	default:
		s.Resolution = model.ResolutionStatic
	}
	for _, p := range se.GetPorts() {
		port := model.Port{Name: p.GetName(), Number: p.GetNumber(), Protocol: model.ParseProtocol(p.GetProtocol()), TargetPort: p.GetTargetPort()}
		if p.GetProtocol() == "" {
			port.Protocol = model.ProtocolFromPortName(p.GetName())
		}
		s.Ports = append(s.Ports, port)
	}
	dnsHost := (s.Resolution == model.ResolutionDNS || s.Resolution == model.ResolutionDNSRoundRobin) && !strings.HasPrefix(host, "*")
	if len(insts) == 0 && dnsHost && se.GetWorkloadSelector() == nil {
		// DNS entries without endpoints resolve their own host name.
		for _, p := range s.Ports {
			s.Endpoints = append(s.Endpoints, &model.Endpoint{
				Address: host, Port: targetPort(p), ServicePort: p.Number, Namespace: o.Namespace, Workload: host,
			})
		}
	}
	for _, in := range insts {
		for _, p := range s.Ports {
			port := targetPort(p)
			if n, ok := in.ports[p.Name]; ok && n != 0 {
				port = n
			}
			s.Endpoints = append(s.Endpoints, &model.Endpoint{
				Address:        in.address,
				Port:           port,
				ServicePort:    p.Number,
				Labels:         in.labels,
				Locality:       model.ParseLocality(in.locality),
				Weight:         in.weight,
				Health:         in.health,
				Namespace:      in.namespace,
				ServiceAccount: in.serviceAccount,
				Workload:       in.name,
				Network:        in.network,
			})
		}
	}
	return s.Finalize()
}

func targetPort(p model.Port) uint32 {
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Number
}
