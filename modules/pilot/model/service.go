// Package model is pilot's service model: services, their ports, and the
// endpoints behind them, independent of where they were discovered (config
// files, the agent registration API, Kubernetes, Consul, plugins).
//
// Values are immutable once a source publishes them. Sources build new values
// for what changed and reuse the pointers of what did not, which is what
// makes change detection and xDS sharing cheap: equal pointers or equal
// hashes mean "nothing to push".
package model

import (
	"cmp"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
)

// Protocol is a service port's application protocol, as Istio names them.
type Protocol string

// Protocols meshd understands. Anything else is treated as TCP.
const (
	ProtocolHTTP  Protocol = "HTTP"
	ProtocolHTTP2 Protocol = "HTTP2"
	ProtocolGRPC  Protocol = "GRPC"
	ProtocolHTTPS Protocol = "HTTPS"
	ProtocolTLS   Protocol = "TLS"
	ProtocolTCP   Protocol = "TCP"
)

// ParseProtocol normalises a protocol name (case-insensitive; "grpc-web"
// and "http1.1" style aliases included). Unknown names are TCP, Istio's
// behaviour for ports it cannot classify.
func ParseProtocol(s string) Protocol {
	switch strings.ToUpper(s) {
	case "HTTP", "HTTP1.1", "HTTP/1.1", "GRPC-WEB":
		return ProtocolHTTP
	case "HTTP2", "H2", "H2C":
		return ProtocolHTTP2
	case "GRPC":
		return ProtocolGRPC
	case "HTTPS":
		return ProtocolHTTPS
	case "TLS":
		return ProtocolTLS
	}
	return ProtocolTCP
}

// ProtocolFromPortName derives a protocol from an Istio port name
// ("http-web", "grpc", "tcp-db"), for sources that only have names.
func ProtocolFromPortName(name string) Protocol {
	prefix, _, _ := strings.Cut(name, "-")
	return ParseProtocol(prefix)
}

// IsHTTP reports whether traffic on the protocol is routed by HTTP rules.
func (p Protocol) IsHTTP() bool {
	return p == ProtocolHTTP || p == ProtocolHTTP2 || p == ProtocolGRPC
}

// IsHTTP2 reports whether upstream connections speak HTTP/2.
func (p Protocol) IsHTTP2() bool { return p == ProtocolHTTP2 || p == ProtocolGRPC }

// Port is one port of a service.
type Port struct {
	Name     string
	Number   uint32
	Protocol Protocol
	// TargetPort is the port endpoints listen on when they do not say
	// otherwise; 0 means the same as Number.
	TargetPort uint32
}

// Resolution is how a proxy finds a service's endpoints.
type Resolution int

// Resolutions, as in ServiceEntry.
const (
	// ResolutionStatic: endpoints are IP addresses known to the mesh (EDS).
	ResolutionStatic Resolution = iota
	// ResolutionDNS: endpoints are host names the proxy resolves (strict DNS).
	ResolutionDNS
	// ResolutionDNSRoundRobin: one host name, logical DNS.
	ResolutionDNSRoundRobin
	// ResolutionNone: no endpoints known; traffic passes through to the
	// original destination.
	ResolutionNone
)

func (r Resolution) String() string {
	switch r {
	case ResolutionDNS:
		return "DNS"
	case ResolutionDNSRoundRobin:
		return "DNS_ROUND_ROBIN"
	case ResolutionNone:
		return "NONE"
	}
	return "STATIC"
}

// Service is one service, named by its host name.
type Service struct {
	// Hostname is the fully qualified name clients use (reviews.bookstore.svc.cluster.local,
	// api.example.com). It may be a wildcard (*.example.com) for external services.
	Hostname string
	// Namespace owns the service: it decides visibility and which
	// DestinationRules and Sidecars apply.
	Namespace string
	// Ports the service exposes, sorted by number.
	Ports []Port
	// Addresses are virtual IPs, when the service has any.
	Addresses []string
	// Resolution says how its endpoints are found.
	Resolution Resolution
	// MeshExternal marks services outside the mesh (no mTLS by default).
	MeshExternal bool
	// ExportTo lists the namespaces that may see the service: "*" for all,
	// "." for its own. Empty means all.
	ExportTo []string
	// Labels are the service's own labels (not its workloads').
	Labels map[string]string
	// Source names the registry the service came from (config, agent,
	// kubernetes, consul, or a plugin's name).
	Source string
	// Endpoints are the service's instances, sorted. Each endpoint belongs to
	// one of Ports by ServicePort.
	Endpoints []*Endpoint

	defHash uint64
	epHash  uint64
}

// Key identifies a service across sources: host name and namespace.
type Key struct {
	Hostname  string
	Namespace string
}

// Key returns the service's key.
func (s *Service) Key() Key { return Key{s.Hostname, s.Namespace} }

// Port returns the service port with the given number.
func (s *Service) Port(number uint32) (Port, bool) {
	for _, p := range s.Ports {
		if p.Number == number {
			return p, true
		}
	}
	return Port{}, false
}

// PortByName returns the service port with the given name.
func (s *Service) PortByName(name string) (Port, bool) {
	for _, p := range s.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return Port{}, false
}

// VisibleTo reports whether a proxy in namespace ns may see the service
// under its ExportTo.
func (s *Service) VisibleTo(ns string) bool {
	if len(s.ExportTo) == 0 {
		return true
	}
	for _, e := range s.ExportTo {
		switch e {
		case "*":
			return true
		case ".":
			if ns == s.Namespace {
				return true
			}
		case "~":
		default:
			if e == ns {
				return true
			}
		}
	}
	return false
}

// Locality is where an endpoint runs.
type Locality struct {
	Region, Zone, Subzone string
}

// String renders region/zone/subzone, Istio's locality label format.
func (l Locality) String() string {
	if l.Subzone != "" {
		return l.Region + "/" + l.Zone + "/" + l.Subzone
	}
	if l.Zone != "" {
		return l.Region + "/" + l.Zone
	}
	return l.Region
}

// ParseLocality parses region/zone/subzone; missing parts stay empty.
func ParseLocality(s string) Locality {
	parts := strings.SplitN(s, "/", 3)
	var l Locality
	if len(parts) > 0 {
		l.Region = parts[0]
	}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.Subzone = parts[2]
	}
	return l
}

// Health of an endpoint.
type Health int

// Health states. Only healthy endpoints receive new traffic.
const (
	Healthy Health = iota
	Unhealthy
	Draining
)

func (h Health) String() string {
	switch h {
	case Unhealthy:
		return "UNHEALTHY"
	case Draining:
		return "DRAINING"
	}
	return "HEALTHY"
}

// Endpoint is one instance of a service on one service port.
type Endpoint struct {
	// Address is an IP address, or a host name for DNS resolution.
	Address string
	// Port is the port the instance listens on.
	Port uint32
	// ServicePort is the service port number this endpoint serves.
	ServicePort uint32
	Labels      map[string]string
	Locality    Locality
	// Weight is the relative load-balancing weight; 0 means 1.
	Weight uint32
	Health Health
	// Namespace and ServiceAccount form the workload's SPIFFE identity.
	Namespace      string
	ServiceAccount string
	// Workload names the workload (WorkloadEntry, pod, agent) it belongs to.
	Workload string
	// Network the endpoint is on; empty is the default network.
	Network string
}

// LBWeight returns the weight to send to proxies, never 0 (grpc-go and
// Envoy ignore zero-weight endpoints).
func (e *Endpoint) LBWeight() uint32 {
	if e.Weight == 0 {
		return 1
	}
	return e.Weight
}

func compareEndpoints(a, b *Endpoint) int {
	return cmp.Or(
		cmp.Compare(a.ServicePort, b.ServicePort),
		cmp.Compare(a.Address, b.Address),
		cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Workload, b.Workload),
	)
}

// Finalize sorts ports and endpoints and computes the change-detection
// hashes. Sources call it once before publishing a service; after it the
// service must not change.
func (s *Service) Finalize() *Service {
	slices.SortFunc(s.Ports, func(a, b Port) int { return cmp.Compare(a.Number, b.Number) })
	slices.SortFunc(s.Endpoints, compareEndpoints)
	s.defHash = s.computeDefHash()
	s.epHash = s.computeEndpointHash()
	return s
}

// DefinitionHash is a digest of everything but the endpoints. Services
// whose definitions hash equal need no CDS/LDS/RDS push.
func (s *Service) DefinitionHash() uint64 {
	if s.defHash == 0 {
		return s.computeDefHash()
	}
	return s.defHash
}

// EndpointHash is a digest of the endpoints alone.
func (s *Service) EndpointHash() uint64 {
	if s.epHash == 0 {
		return s.computeEndpointHash()
	}
	return s.epHash
}

type hasher struct{ b []byte }

func (h *hasher) str(s string) { h.b = append(append(h.b, s...), 0) }
func (h *hasher) num(n uint64) { h.b = strconv.AppendUint(h.b, n, 36); h.b = append(h.b, 0) }
func (h *hasher) sum() uint64  { f := fnv.New64a(); f.Write(h.b); return f.Sum64() | 1 }
func (h *hasher) labels(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		h.str(k)
		h.str(m[k])
	}
	h.str("")
}

func (s *Service) computeDefHash() uint64 {
	var h hasher
	h.str(s.Hostname)
	h.str(s.Namespace)
	for _, p := range s.Ports {
		h.str(p.Name)
		h.num(uint64(p.Number))
		h.str(string(p.Protocol))
		h.num(uint64(p.TargetPort))
	}
	h.str("")
	for _, a := range s.Addresses {
		h.str(a)
	}
	h.str("")
	h.num(uint64(s.Resolution))
	if s.MeshExternal {
		h.str("ext")
	}
	for _, e := range s.ExportTo {
		h.str(e)
	}
	h.str("")
	h.labels(s.Labels)
	h.str(s.Source)
	return h.sum()
}

func (s *Service) computeEndpointHash() uint64 {
	var h hasher
	for _, e := range s.Endpoints {
		h.str(e.Address)
		h.num(uint64(e.Port))
		h.num(uint64(e.ServicePort))
		h.labels(e.Labels)
		h.str(e.Locality.String())
		h.num(uint64(e.Weight))
		h.num(uint64(e.Health))
		h.str(e.Namespace)
		h.str(e.ServiceAccount)
		h.str(e.Workload)
		h.str(e.Network)
	}
	return h.sum()
}

// EndpointsFor returns the endpoints serving service port number, in order.
func (s *Service) EndpointsFor(port uint32) []*Endpoint {
	var out []*Endpoint
	for _, e := range s.Endpoints {
		if e.ServicePort == port {
			out = append(out, e)
		}
	}
	return out
}

// LabelsMatch reports whether labels contain every key/value of selector.
// An empty selector matches everything.
func LabelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
