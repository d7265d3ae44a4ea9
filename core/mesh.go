package core

// MeshConfig holds the mesh-wide settings from the `mesh:` section of
// meshd.yaml. It is the meshd counterpart of Istio's MeshConfig: the few
// settings that several modules read (citadel the trust domain, pilot the
// outbound policy, galley the default mTLS mode for its analysis), so it lives
// in core rather than in any one module.
type MeshConfig struct {
	// TrustDomain is the SPIFFE trust domain of every identity in the mesh.
	TrustDomain string `mapstructure:"trustDomain" doc:"SPIFFE trust domain of workload identities (spiffe://<trustDomain>/ns/<ns>/sa/<sa>)"`
	// DefaultMTLSMode applies where no PeerAuthentication selects a workload.
	DefaultMTLSMode string `mapstructure:"defaultMTLSMode" doc:"mTLS mode where no PeerAuthentication applies: STRICT, PERMISSIVE or DISABLE"`
	// OutboundTrafficPolicy decides what sidecars do with traffic to hosts the
	// mesh does not know: ALLOW_ANY passes it through, REGISTRY_ONLY blackholes it.
	OutboundTrafficPolicy string `mapstructure:"outboundTrafficPolicy" doc:"traffic to unknown hosts: ALLOW_ANY (passthrough) or REGISTRY_ONLY (blackhole)"`
	// ClusterDomain is the DNS suffix that short host names are expanded with.
	ClusterDomain string `mapstructure:"clusterDomain" doc:"DNS suffix used to expand short host names (reviews -> reviews.<ns>.svc.<clusterDomain>)"`
	// RootNamespace holds mesh-wide config: its DestinationRules, Sidecar and
	// PeerAuthentication apply to every namespace. Istio's default, so Istio
	// YAML keeps its meaning.
	RootNamespace string `mapstructure:"rootNamespace" doc:"namespace whose DestinationRules, Sidecar and PeerAuthentication apply mesh-wide"`
	// ExtensionProviders are the external authorizers of CUSTOM
	// AuthorizationPolicies, and RateLimits the local rate limits (see
	// mesh_security.go). Both are pointers so MeshConfig stays comparable
	// (generators key caches by it); read them with Providers and
	// LocalRateLimits.
	ExtensionProviders *[]ExtensionProvider `mapstructure:"extensionProviders" doc:"external authorizers CUSTOM AuthorizationPolicies name (name, envoyExtAuthzGrpc or envoyExtAuthzHttp); see docs/security.md"`
	RateLimits         *[]RateLimit         `mapstructure:"rateLimits" doc:"local rate limits on workloads' inbound traffic (name, namespace, selector, ports, match, tokenBucket, perConnection); see docs/security.md"`
}

// Mesh-wide setting values accepted by MeshConfig.
const (
	MTLSStrict     = "STRICT"
	MTLSPermissive = "PERMISSIVE"
	MTLSDisable    = "DISABLE"

	OutboundAllowAny     = "ALLOW_ANY"
	OutboundRegistryOnly = "REGISTRY_ONLY"
)

// DefaultMeshConfig returns Istio's defaults, so Istio YAML behaves the same
// under meshd without a mesh section.
func DefaultMeshConfig() MeshConfig {
	return MeshConfig{
		TrustDomain:           "cluster.local",
		DefaultMTLSMode:       MTLSPermissive,
		OutboundTrafficPolicy: OutboundAllowAny,
		ClusterDomain:         "cluster.local",
		RootNamespace:         "istio-system",
	}
}
