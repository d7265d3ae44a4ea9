package pilot

import (
	"github.com/meshd/meshd/modules/pilot/generate/envoy"
	"github.com/meshd/meshd/modules/pilot/generate/proxyless"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
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
