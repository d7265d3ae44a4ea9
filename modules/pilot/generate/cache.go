package generate

import (
	"strconv"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

// Cache remembers built clusters and ClusterLoadAssignments across scopes,
// groups of proxies and pushes, keyed by exactly the inputs each one is
// built from: the service (by host, namespace and the digest of its
// definition, or of its endpoints for an assignment), the DestinationRule
// object that applies, the flavor and mesh settings, and, where the rule
// makes endpoints depend on the proxy, its locality and its values of the
// rule's failoverPriority labels. Services and config objects are immutable
// and keep their identity while unchanged, so after one proxy's config is
// built, every other group and every later push reuses what did not
// change; a rule or service that changes simply misses.
//
// Each cached message also has a version, which generators hand to the
// xds server so it reuses its encoding instead of marshalling again.
//
// A Cache is safe for concurrent use. Entries not used between two calls
// of Sweep are dropped, so call Sweep before each full recompute.
type Cache struct {
	mu       sync.Mutex
	gen      uint64
	next     uint64
	clusters map[clusterKey]*cacheEntry
	clas     map[claKey]*cacheEntry
}

type cacheEntry struct {
	msg     proto.Message
	version string
	used    uint64
}

type svcKey struct {
	host, namespace string
	digest          uint64
}

type clusterKey struct {
	flavor Flavor
	mesh   core.MeshConfig
	name   string
	svc    svcKey
	port   model.Port
	rule   *galleyapi.Object
	// mtls is what auto mTLS decided (authn), which depends on
	// PeerAuthentications and, for proxyless clients, on the endpoints.
	mtls string
	// locality and failover are set for DNS clusters, which carry their
	// endpoints, as in claKey.
	locality model.Locality
	failover string
}

type claKey struct {
	flavor   Flavor
	name     string
	svc      svcKey
	rule     *galleyapi.Object
	locality model.Locality
	// failover is the proxy's values of the rule's failoverPriority
	// labels (failoverKey), empty when the rule does not use it.
	failover string
	// peerAuth is the PeerAuthentication digest: Envoy endpoints carry
	// the tlsMode metadata only where mTLS is not disabled.
	peerAuth uint64
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{clusters: map[clusterKey]*cacheEntry{}, clas: map[claKey]*cacheEntry{}}
}

// Sweep drops the entries no scope used since the previous Sweep.
func (c *Cache) Sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.clusters {
		if e.used != c.gen {
			delete(c.clusters, k)
		}
	}
	for k, e := range c.clas {
		if e.used != c.gen {
			delete(c.clas, k)
		}
	}
	c.gen++
}

// Len returns the number of cached clusters and assignments.
func (c *Cache) Len() (clusters, assignments int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.clusters), len(c.clas)
}

func (c *Cache) entry(msg proto.Message) *cacheEntry {
	c.next++
	return &cacheEntry{msg: msg, version: "c" + strconv.FormatUint(c.next, 36), used: c.gen}
}

func ruleObject(r ClusterRef) *galleyapi.Object {
	if r.Rule == nil {
		return nil
	}
	return r.Rule.Object
}

// autoMTLSKey is the part of auto mTLS's decision a cluster's cache key
// needs (empty when a DestinationRule sets TLS, which the rule key covers).
func autoMTLSKey(s *Scope, r ClusterRef) string {
	if s.Policy(r).GetTls() != nil {
		return ""
	}
	if s.Flavor == Proxyless {
		if !s.MTLSCapable {
			return ""
		}
		return autoUpstream(s, r).Key()
	}
	if authn.For(s.Index).ServiceDisabled(r.Service) {
		return "disabled"
	}
	return ""
}

// cluster returns the cached cluster for r, building it if needed.
func (c *Cache) cluster(s *Scope, r ClusterRef) (*clusterv3.Cluster, string) {
	digest := r.Service.DefinitionHash()
	if !r.EDS() {
		digest ^= r.Service.EndpointHash() // DNS clusters carry their endpoints
	}
	k := clusterKey{
		flavor: s.Flavor, mesh: s.Index.Mesh, name: r.Name,
		svc:  svcKey{r.Service.Hostname, r.Service.Namespace, digest},
		port: r.Port, rule: ruleObject(r), mtls: autoMTLSKey(s, r),
	}
	if !r.EDS() {
		k.locality, k.failover = endpointProxyKey(s, s.Policy(r))
	}
	c.mu.Lock()
	e := c.clusters[k]
	if e != nil {
		e.used = c.gen
		c.mu.Unlock()
		cl, _ := e.msg.(*clusterv3.Cluster)
		return cl, e.version
	}
	c.mu.Unlock()
	cl := buildCluster(s, r)
	if cl == nil {
		return nil, ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.clusters[k]; e != nil { // built concurrently
		e.used = c.gen
		return e.msg.(*clusterv3.Cluster), e.version
	}
	e = c.entry(cl)
	c.clusters[k] = e
	return cl, e.version
}

// endpointProxyKey returns what endpoints built with policy tp read of
// the proxy: its locality when the policy enables locality-aware load
// balancing (outlier detection or locality settings), and its
// failoverPriority values when the policy uses failoverPriority. Both are
// empty otherwise, so proxies anywhere, labelled anyhow, share one
// assignment.
func endpointProxyKey(s *Scope, tp *networking.TrafficPolicy) (model.Locality, string) {
	if tp.GetOutlierDetection() == nil && tp.GetLoadBalancer().GetLocalityLbSetting() == nil {
		return model.Locality{}, ""
	}
	return s.Locality, failoverKey(s, tp)
}

// loadAssignment returns the cached assignment for r, building it if
// needed. The proxy's locality and labels are part of the key only when
// the policy makes endpoints depend on them (endpointProxyKey).
func (c *Cache) loadAssignment(s *Scope, r ClusterRef) (*endpointv3.ClusterLoadAssignment, string) {
	k := claKey{
		flavor: s.Flavor, name: r.Name,
		svc:  svcKey{r.Service.Hostname, r.Service.Namespace, r.Service.EndpointHash()},
		rule: ruleObject(r),
	}
	if s.Flavor == Envoy {
		k.peerAuth = authn.For(s.Index).Digest()
	}
	k.locality, k.failover = endpointProxyKey(s, s.Policy(r))
	c.mu.Lock()
	e := c.clas[k]
	if e != nil {
		e.used = c.gen
		c.mu.Unlock()
		return e.msg.(*endpointv3.ClusterLoadAssignment), e.version
	}
	c.mu.Unlock()
	cla := buildLoadAssignment(s, r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.clas[k]; e != nil {
		e.used = c.gen
		return e.msg.(*endpointv3.ClusterLoadAssignment), e.version
	}
	e = c.entry(cla)
	c.clas[k] = e
	return cla, e.version
}
