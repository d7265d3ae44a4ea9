package pilot

import (
	"cmp"
	"net/http"
	"slices"
	"strings"

	"github.com/meshd/meshd/core/admin"
	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	"github.com/meshd/meshd/modules/pilot/generate/proxyless"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/security"
	"github.com/meshd/meshd/modules/pilot/security/authn"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// KeyExtension is implemented by extensions whose output depends on more
// of a proxy than pilot's own generator key covers (for security: which
// policies select the proxy's workload, and for proxyless servers the
// addresses and ports they serve). KeyPart returns that part for one
// resource type, "" when the extension adds nothing to that type; it is
// appended to every key of the type, so it must be cheap and must name
// everything the extension reads from p.
type KeyExtension interface {
	KeyPart(ix *index.Index, p *xdsapi.Proxy, typeURL string) string
}

// securityUpdates widens an endpoint-only push where security output
// depends on endpoints: the clusters of a service whose endpoints' mesh
// membership or identities changed (proxyless clients' auto mTLS picks TLS
// and SANs per cluster from them), and every listener when the addresses
// of in-mesh workloads changed (proxyless servers in PERMISSIVE mode tell
// mTLS clients by address). Neither needs re-keying, so both stay cheaper
// than a full push.
func securityUpdates(req *xdsapi.PushRequest, old, cur *registry.View, keys []model.Key, clusters []string) {
	var cds, lds bool
	for _, k := range keys {
		prev, ok1 := old.Service(k)
		svc, ok2 := cur.Service(k)
		if !ok1 || !ok2 {
			continue
		}
		cds = cds || authn.IdentitiesChanged(prev, svc)
		lds = lds || authn.MeshAddressesChanged(prev, svc)
	}
	if cds {
		req.Updates[xdsapi.ClusterType] = clusters
	}
	if lds {
		req.Updates[xdsapi.ListenerType] = nil
	}
}

// Interface guards: the security extensions pilot adds in Provision.
var (
	_ KeyExtension               = envoy.Security{}
	_ KeyExtension               = proxyless.Servers{}
	_ ProxylessListenerExtension = proxyless.Servers{}
)

// securityzWorkload is one workload port as /debug/securityz shows it.
type securityzWorkload struct {
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	Addresses []string          `json:"addresses,omitempty"`
	Port      uint32            `json:"port"`
	// MTLS is the port's effective mode and the policy that decided it.
	MTLS       string `json:"mtls"`
	MTLSSource string `json:"mtlsSource"`
	// Policies lists the AuthorizationPolicies by action, and the
	// RequestAuthentications and rate limits that select the workload.
	Policies map[string][]string `json:"policies,omitempty"`
	// ProxylessIssues are what a proxyless gRPC server of this workload
	// could not evaluate, and how each fails closed.
	ProxylessIssues []string `json:"proxylessIssues,omitempty"`
}

// securityz serves what the security config means for each workload port
// the registry knows (or only those of ?namespace=): its mTLS mode and why,
// the policies that select it, and what would fail closed on a proxyless
// server.
func (m *Module) securityz(w http.ResponseWriter, r *http.Request) {
	ix := m.ix.Load()
	cfg := security.For(ix)
	filter := r.URL.Query().Get("namespace")
	type key struct {
		ns, labels string
		port       uint32
	}
	byKey := map[key]*securityzWorkload{}
	var order []key
	if ix.Registry != nil {
		for _, s := range ix.Registry.Services {
			for _, e := range s.Endpoints {
				ns := authn.EndpointNamespace(s, e)
				if filter != "" && ns != filter {
					continue
				}
				k := key{ns, labelString(e.Labels), e.Port}
				if wl := byKey[k]; wl != nil {
					if !slices.Contains(wl.Addresses, e.Address) {
						wl.Addresses = append(wl.Addresses, e.Address)
					}
					continue
				}
				wl := &securityzWorkload{Namespace: ns, Labels: e.Labels, Addresses: []string{e.Address}, Port: e.Port, Policies: map[string][]string{}}
				mode, src := cfg.Authn.Resolve(ns, e.Labels, e.Port)
				wl.MTLS, wl.MTLSSource = mode.String(), src.String()
				work := security.Workload{Namespace: ns, Labels: e.Labels}
				a := cfg.AuthorizationPolicies(work)
				for action, list := range map[string][]security.Policy{"CUSTOM": a.Custom, "AUDIT": a.Audit, "DENY": a.Deny, "ALLOW": a.Allow} {
					for _, p := range list {
						wl.Policies[action] = append(wl.Policies[action], p.Name())
					}
				}
				for _, p := range cfg.RequestAuthentications(work) {
					wl.Policies["RequestAuthentication"] = append(wl.Policies["RequestAuthentication"], p.Object.Namespace+"/"+p.Object.Name)
				}
				for _, rl := range cfg.RateLimits(work, e.Port) {
					wl.Policies["rateLimits"] = append(wl.Policies["rateLimits"], rl.Name)
				}
				for _, i := range cfg.GRPCServerChains(ix, work, e.Port).Issues {
					wl.ProxylessIssues = append(wl.ProxylessIssues, i.String())
				}
				byKey[k] = wl
				order = append(order, k)
			}
		}
	}
	slices.SortFunc(order, func(a, b key) int {
		return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.labels, b.labels), cmp.Compare(a.port, b.port))
	})
	out := struct {
		IndexVersion string               `json:"indexVersion"`
		DefaultMTLS  string               `json:"defaultMTLSMode"`
		Workloads    []*securityzWorkload `json:"workloads"`
	}{IndexVersion: ix.Version, DefaultMTLS: ix.Mesh.DefaultMTLSMode, Workloads: []*securityzWorkload{}}
	for _, k := range order {
		out.Workloads = append(out.Workloads, byKey[k])
	}
	admin.WriteJSON(w, http.StatusOK, out)
}
