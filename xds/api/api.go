// Package api is the surface of meshd's xds module that other modules
// program against: the Generator they register per resource type, the push
// requests they send, the per-proxy sync status they read, and the events
// the module publishes. It holds types and small interfaces only, so a module
// can depend on it without pulling in the gRPC server.
//
// A module obtains the implementation from the host:
//
//	x, err := core.Dep[api.XDS](ctx, "xds")
//	x.RegisterGenerator(api.ClusterType, clusters)
//
// or asks only for the slice it needs (core.Dep[api.Pusher](ctx, "xds")).
package api

import (
	"context"
	"crypto/tls"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Type URLs of the resource types meshd serves. Other type URLs work as well;
// these are the ones the server knows the ordering and state-of-the-world
// rules for.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// ShortType returns the short name Istio's metrics and istioctl use for a
// type URL (cds, eds, lds, rds, sds), or the message name for other types.
func ShortType(typeURL string) string {
	switch typeURL {
	case ClusterType:
		return "cds"
	case EndpointType:
		return "eds"
	case ListenerType:
		return "lds"
	case RouteType:
		return "rds"
	case SecretType:
		return "sds"
	}
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// Generator builds the resources of one type.
//
// The server never asks a generator for one proxy's config. It first asks
// Key which inputs a proxy's config depends on, groups proxies by key, calls
// Generate once per group, encodes every resource once, and hands the same
// bytes to every proxy of the group. This is what keeps a push to thousands
// of proxies cheap, so Key must name everything Generate reads from the
// proxy (namespace for Sidecar scoping, identity for secrets, ...) and
// nothing more: a key that is too fine only costs sharing, a key that is too
// coarse serves one proxy another's config.
//
// Each proxy then receives only the resources it subscribed to, by name,
// out of its group's set (grpc-go and Envoy's EDS subscribe by name).
//
// The server calls Generate from one goroutine at a time, never
// concurrently. It calls Key from any goroutine, often (for every proxy on
// every full push) and with its own lock held: Key must be cheap and must
// not call back into the xds module.
type Generator interface {
	// Key returns the key of the inputs Generate reads from p. Proxies with
	// equal keys share one generated, encoded set of resources.
	Key(p *Proxy) string
	// Generate returns the resources for the group req.Key. When req.Names
	// is nil it returns every resource the group sees (a full recompute);
	// otherwise only those names, and a name it leaves out is deleted.
	Generate(ctx context.Context, req GenerateRequest) ([]Resource, error)
}

// GenerateRequest is one call to Generator.Generate.
type GenerateRequest struct {
	// Key is the group's key, as returned by Generator.Key.
	Key string
	// Proxy is one proxy of the group. Read only what Key covers.
	Proxy *Proxy
	// Names is nil for a full recompute, or the names to recompute for an
	// incremental push (PushRequest.Updates).
	Names []string
	// Reason says why the push runs, for the generator's own logs.
	Reason string
}

// Resource is one named xDS resource.
type Resource struct {
	// Name is the resource name proxies subscribe to (cluster name,
	// ClusterLoadAssignment cluster_name, listener name, ...).
	Name string
	// Message is the resource. The server encodes it once and does not keep
	// it, so the generator may reuse it.
	Message proto.Message
	// Version is optional: when set and equal to the version this resource
	// had in the group's previous set, the server reuses the previous
	// encoding instead of marshalling Message again.
	Version string
}

// PushRequest asks for a push. Requests are debounced and merged: a burst of
// changes becomes one push.
type PushRequest struct {
	// Full recomputes every type for every proxy: services, routing rules or
	// anything a Key may depend on changed.
	Full bool
	// Updates lists what changed without touching anything else, by type
	// URL: an endpoint-only change is {EndpointType: [cluster names]}. Only
	// those types are recomputed, only those names, and only proxies
	// subscribed to them receive anything. A type with no names is
	// recomputed in full (every name, no re-keying).
	Updates map[string][]string
	// Reason is a short word for logs (e.g. "config", "endpoints", "cert").
	Reason string
	// Revision is the config revision (galley's accepted revision) the
	// push is computed from, so status can say which revision each proxy
	// runs. Zero means "unchanged": the push is built on the last revision
	// the server was told about (an endpoint or certificate change does
	// not change config). Merged requests keep the highest.
	//
	// A request with a Revision and neither Full nor Updates regenerates
	// nothing: it says the current resources are what that revision
	// specifies, for a config change no proxy sees.
	Revision uint64
}

// FullPush returns a request to recompute everything.
func FullPush(reason string) PushRequest { return PushRequest{Full: true, Reason: reason} }

// EndpointPush returns an endpoint-only request for the named
// ClusterLoadAssignments.
func EndpointPush(reason string, clusters ...string) PushRequest {
	return PushRequest{Updates: map[string][]string{EndpointType: clusters}, Reason: reason}
}

// Merge folds o into r, so that pushing the result does at least what
// pushing both would.
func (r PushRequest) Merge(o PushRequest) PushRequest {
	out := PushRequest{Full: r.Full || o.Full, Revision: max(r.Revision, o.Revision)}
	switch {
	case r.Reason == "" || r.Reason == o.Reason:
		out.Reason = o.Reason
	case o.Reason == "" || slices.Contains(strings.Split(r.Reason, ","), o.Reason):
		out.Reason = r.Reason
	default:
		out.Reason = r.Reason + "," + o.Reason
	}
	if out.Full {
		return out // a full push recomputes every update anyway
	}
	out.Updates = make(map[string][]string, len(r.Updates)+len(o.Updates))
	for _, u := range []map[string][]string{r.Updates, o.Updates} {
		for t, names := range u {
			prev, seen := out.Updates[t]
			switch {
			case seen && prev == nil, names == nil:
				out.Updates[t] = nil // whole type
			default:
				out.Updates[t] = append(prev, names...)
			}
		}
	}
	for t, names := range out.Updates {
		if names != nil {
			slices.Sort(names)
			out.Updates[t] = slices.Compact(names)
		}
	}
	return out
}

// GeneratorRegistry takes the generator of a resource type.
type GeneratorRegistry interface {
	// RegisterGenerator makes g the source of typeURL resources. Call it
	// from Provision; registering a type twice is an error.
	RegisterGenerator(typeURL string, g Generator) error
}

// Pusher takes push requests.
type Pusher interface {
	// Push asks for a push. It never blocks: requests are merged and
	// debounced (modules.xds.debounce) and one push runs at a time.
	Push(PushRequest)
}

// ServiceRegistry lets modules serve their own gRPC services on the xDS ports.
type ServiceRegistry interface {
	// RegisterService calls fn with each gRPC server it must serve on: the
	// TLS server only when tlsOnly (the CSR service, which authenticates
	// callers by their certificate), otherwise both. Call it from Provision.
	RegisterService(fn func(grpc.ServiceRegistrar), tlsOnly bool) error
}

// TLSEnabler opens the TLS port.
type TLSEnabler interface {
	// EnableTLS serves xDS and the TLS services on modules.xds.tlsAddress
	// with cfg. It binds the port at once, so a port in use fails the
	// caller's Provision. A client certificate cfg verified makes its
	// SPIFFE URI the proxy's verified identity.
	EnableTLS(cfg *tls.Config) error
}

// StatusSource reports per-proxy sync state.
type StatusSource interface {
	// Statuses returns one entry per connected xDS stream, sorted by proxy ID.
	Statuses() []ProxyStatus
	// AckedVersions returns, for every stream subscribed to typeURL, the
	// Version its generator gave resource name in the set the stream last
	// acknowledged ("" when it acknowledged nothing yet, the set lacks the
	// name, or no Version was given). It tells a module which of its own
	// versions proxies hold, without knowing how the server names its
	// responses.
	AckedVersions(typeURL, name string) []string
}

// XDS is everything the xds module offers other modules.
type XDS interface {
	GeneratorRegistry
	Pusher
	ServiceRegistry
	TLSEnabler
	StatusSource
}
