package generate

import (
	"math"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

// Defaults Istio applies, kept so Istio YAML behaves the same.
const (
	// defaultConnectTimeout is Istio's connectTimeout default.
	defaultConnectTimeout = 10 * time.Second
	// httpProtocolOptionsKey is the typed_extension_protocol_options key
	// Envoy reads upstream HTTP settings from.
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// grpcMaxRingSize is grpc-go's upper bound on ring sizes; larger
	// values are rejected.
	grpcMaxRingSize = 8 << 20
)

// ADS is the config source that points a proxy back at the ADS stream it
// is on, for EDS clusters, RDS and SDS. Each call returns a new message the
// caller may change.
func ADS() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// Messages every resource of a kind shares. The xds server only encodes
// what generators return, so one immutable instance can sit in thousands of
// resources, which saves most of the allocations of a full recompute.
// Nothing may modify them.
var (
	sharedADS = ADS()
	// defaultThresholds are Istio's circuit breakers when a rule sets no
	// connection pool: no limits, remaining capacity tracked.
	defaultThresholds = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
		MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
		MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
		MaxRetries:         wrapperspb.UInt32(math.MaxUint32),
		TrackRemaining:     true,
	}}}
	defaultConnectTimeoutPB = durationpb.New(defaultConnectTimeout)
	// http2Options are the upstream options of an HTTP/2 or gRPC port
	// without connection pool settings.
	http2Options = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})}
)

// Clusters returns the outbound clusters the proxy sees, sorted by name:
// one per visible service port and one per DestinationRule subset of it.
func Clusters(s *Scope) []*clusterv3.Cluster {
	refs := s.ClusterRefs()
	out := make([]*clusterv3.Cluster, 0, len(refs))
	for _, r := range refs {
		if c := Cluster(s, r); c != nil {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Cluster builds one outbound cluster, or takes it from the scope's cache.
// It returns nil for clusters the flavor cannot express (passthrough
// clusters for proxyless clients).
func Cluster(s *Scope, r ClusterRef) *clusterv3.Cluster {
	if s.Cache == nil {
		return buildCluster(s, r)
	}
	c, v := s.Cache.cluster(s, r)
	if c != nil {
		s.setVersion(c, v)
	}
	return c
}

func buildCluster(s *Scope, r ClusterRef) *clusterv3.Cluster {
	tp := s.Policy(r)
	c := &clusterv3.Cluster{Name: r.Name}
	envoy := s.Flavor == Envoy
	if envoy {
		c.ConnectTimeout = defaultConnectTimeoutPB
	}
	switch {
	case isPassthrough(r) || (envoy && tp.GetLoadBalancer().GetSimple() == networking.LoadBalancerSettings_PASSTHROUGH):
		if !envoy {
			return nil
		}
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
		c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
	case r.Service.Resolution == model.ResolutionDNS || r.Service.Resolution == model.ResolutionDNSRoundRobin:
		eps := index.SubsetEndpoints(r.Service, r.Port.Number, r.Subset)
		if envoy {
			t := clusterv3.Cluster_STRICT_DNS
			if r.Service.Resolution == model.ResolutionDNSRoundRobin {
				t = clusterv3.Cluster_LOGICAL_DNS
				eps = eps[:min(len(eps), 1)] // Envoy: one host for logical DNS
			}
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: t}
			c.DnsLookupFamily = clusterv3.Cluster_V4_ONLY
		} else {
			// grpc-go resolves DNS only for LOGICAL_DNS clusters of exactly
			// one host.
			if len(eps) == 0 {
				return nil
			}
			eps = eps[:1]
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		}
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{
			ClusterName: r.Name,
			Endpoints:   localityGroups(s, r, eps, tp),
		}
	default:
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: sharedADS, ServiceName: r.Name}
	}
	if c.LbPolicy != clusterv3.Cluster_CLUSTER_PROVIDED {
		applyLoadBalancer(s, c, tp.GetLoadBalancer())
	}
	applyConnectionPool(s, c, r, tp.GetConnectionPool())
	applyOutlierDetection(s, c, tp.GetOutlierDetection())
	applyTLS(s, c, r, tp.GetTls())
	return c
}

func applyLoadBalancer(s *Scope, c *clusterv3.Cluster, lb *networking.LoadBalancerSettings) {
	envoy := s.Flavor == Envoy
	if ch := lb.GetConsistentHash(); ch != nil {
		if mg := ch.GetMaglev(); mg != nil && envoy {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			if mg.GetTableSize() > 0 {
				c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{
					TableSize: wrapperspb.UInt64(mg.GetTableSize()),
				}}
			}
		} else {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			rh := &clusterv3.Cluster_RingHashLbConfig{HashFunction: clusterv3.Cluster_RingHashLbConfig_XX_HASH}
			size := ch.GetRingHash().GetMinimumRingSize()
			if size == 0 {
				size = ch.GetMinimumRingSize()
			}
			if size > 0 {
				if !envoy {
					size = min(size, grpcMaxRingSize)
				}
				rh.MinimumRingSize = wrapperspb.UInt64(size)
			}
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: rh}
		}
	} else {
		switch lb.GetSimple() {
		case networking.LoadBalancerSettings_ROUND_ROBIN:
			c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		case networking.LoadBalancerSettings_LEAST_CONN, networking.LoadBalancerSettings_LEAST_REQUEST:
			c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		case networking.LoadBalancerSettings_RANDOM:
			if envoy {
				c.LbPolicy = clusterv3.Cluster_RANDOM
			} else {
				c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN // grpc-go rejects RANDOM
			}
		default:
			if envoy {
				c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST // Istio's default
			} else {
				c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN // grpc-go's default
			}
		}
	}
	if envoy && len(lb.GetLocalityLbSetting().GetDistribute()) > 0 && localityLBEnabled(lb) {
		commonLB(c).LocalityConfigSpecifier = &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig_{
			LocalityWeightedLbConfig: &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig{},
		}
	}
}

func commonLB(c *clusterv3.Cluster) *clusterv3.Cluster_CommonLbConfig {
	if c.CommonLbConfig == nil {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{}
	}
	return c.CommonLbConfig
}

func localityLBEnabled(lb *networking.LoadBalancerSettings) bool {
	e := lb.GetLocalityLbSetting().GetEnabled()
	return e == nil || e.GetValue()
}

// applyConnectionPool sets circuit breakers and upstream protocol options.
// Envoy gets Istio's limits (unlimited unless set); grpc-go reads only
// max_requests.
func applyConnectionPool(s *Scope, c *clusterv3.Cluster, r ClusterRef, cp *networking.ConnectionPoolSettings) {
	tcp, h := cp.GetTcp(), cp.GetHttp()
	if s.Flavor == Proxyless {
		if n := h.GetHttp2MaxRequests(); n > 0 {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority: corev3.RoutingPriority_DEFAULT, MaxRequests: wrapperspb.UInt32(uint32(n)),
			}}}
		}
		return
	}
	if cp == nil {
		c.CircuitBreakers = defaultThresholds
		if r.Port.Protocol.IsHTTP2() {
			c.TypedExtensionProtocolOptions = http2Options
		}
		return
	}
	th := &clusterv3.CircuitBreakers_Thresholds{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     wrapperspb.UInt32(limit(tcp.GetMaxConnections())),
		MaxPendingRequests: wrapperspb.UInt32(limit(h.GetHttp1MaxPendingRequests())),
		MaxRequests:        wrapperspb.UInt32(limit(h.GetHttp2MaxRequests())),
		MaxRetries:         wrapperspb.UInt32(limit(h.GetMaxRetries())),
		TrackRemaining:     true,
	}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	if d := tcp.GetConnectTimeout(); d != nil {
		c.ConnectTimeout = d
	}
	if ka := tcp.GetTcpKeepalive(); ka != nil {
		k := &corev3.TcpKeepalive{}
		if ka.GetProbes() > 0 {
			k.KeepaliveProbes = wrapperspb.UInt32(ka.GetProbes())
		}
		if t := ka.GetTime(); t != nil {
			k.KeepaliveTime = wrapperspb.UInt32(uint32(max(1, t.AsDuration()/time.Second)))
		}
		if t := ka.GetInterval(); t != nil {
			k.KeepaliveInterval = wrapperspb.UInt32(uint32(max(1, t.AsDuration()/time.Second)))
		}
		c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{TcpKeepalive: k}
	}

	if !r.Port.Protocol.IsHTTP() && h == nil {
		return
	}
	var common *corev3.HttpProtocolOptions
	commonOpts := func() *corev3.HttpProtocolOptions {
		if common == nil {
			common = &corev3.HttpProtocolOptions{}
		}
		return common
	}
	if h.GetMaxRequestsPerConnection() > 0 {
		commonOpts().MaxRequestsPerConnection = wrapperspb.UInt32(uint32(h.GetMaxRequestsPerConnection()))
	}
	if d := h.GetIdleTimeout(); d != nil {
		commonOpts().IdleTimeout = d
	}
	if d := tcp.GetMaxConnectionDuration(); d != nil {
		commonOpts().MaxConnectionDuration = d
	}
	h2 := r.Port.Protocol.IsHTTP2() || h.GetH2UpgradePolicy() == networking.ConnectionPoolSettings_HTTPSettings_UPGRADE
	var h2opts *corev3.Http2ProtocolOptions
	if h2 {
		h2opts = &corev3.Http2ProtocolOptions{}
		if n := h.GetMaxConcurrentStreams(); n > 0 {
			h2opts.MaxConcurrentStreams = wrapperspb.UInt32(uint32(n))
		}
	}
	opts := &httpv3.HttpProtocolOptions{CommonHttpProtocolOptions: common}
	switch {
	case h.GetUseClientProtocol():
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		}
	case h2:
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2opts},
		}}
	case common != nil:
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}}
	default:
		return // plain HTTP/1.1 with defaults needs no options
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(opts)}
}

// limit turns Istio's "0 means unlimited" into Envoy's explicit maximum.
func limit(n int32) uint32 {
	if n <= 0 {
		return math.MaxUint32
	}
	return uint32(n)
}

// applyOutlierDetection translates Istio's outlier detection.
//
// Envoy gets consecutive-error ejection with success-rate ejection off, as
// Istio configures it. grpc-go implements only success-rate and
// failure-percentage ejection (gRFC A50), so a proxyless client gets
// failure-percentage ejection tuned to mean the same thing: an endpoint
// that failed more than half of at least N requests in an interval is
// ejected, where N is the consecutive-error count Istio would have used.
// Success-rate ejection, which needs five or more endpoints to compare, is
// turned off for both.
func applyOutlierDetection(s *Scope, c *clusterv3.Cluster, od *networking.OutlierDetection) {
	if od == nil {
		return
	}
	if s.Flavor == Proxyless {
		n := uint32(5)
		switch {
		case od.GetConsecutive_5XxErrors() != nil:
			n = od.GetConsecutive_5XxErrors().GetValue()
		case od.GetConsecutiveErrors() > 0:
			n = uint32(od.GetConsecutiveErrors())
		case od.GetConsecutiveGatewayErrors() != nil:
			n = od.GetConsecutiveGatewayErrors().GetValue()
		}
		if n == 0 {
			if g := od.GetConsecutiveGatewayErrors().GetValue(); g > 0 {
				n = g
			} else {
				return // ejection explicitly off
			}
		}
		out := &clusterv3.OutlierDetection{
			Interval:                       od.GetInterval(),
			BaseEjectionTime:               od.GetBaseEjectionTime(),
			EnforcingSuccessRate:           wrapperspb.UInt32(0),
			FailurePercentageThreshold:     wrapperspb.UInt32(50),
			EnforcingFailurePercentage:     wrapperspb.UInt32(100),
			FailurePercentageMinimumHosts:  wrapperspb.UInt32(1),
			FailurePercentageRequestVolume: wrapperspb.UInt32(n),
		}
		if p := od.GetMaxEjectionPercent(); p > 0 {
			out.MaxEjectionPercent = wrapperspb.UInt32(uint32(min(p, 100)))
		}
		c.OutlierDetection = out
		return
	}
	out := &clusterv3.OutlierDetection{
		Interval:             od.GetInterval(),
		BaseEjectionTime:     od.GetBaseEjectionTime(),
		EnforcingSuccessRate: wrapperspb.UInt32(0),
	}
	if p := od.GetMaxEjectionPercent(); p > 0 {
		out.MaxEjectionPercent = wrapperspb.UInt32(uint32(min(p, 100)))
	}
	switch {
	case od.GetConsecutive_5XxErrors() != nil:
		v := od.GetConsecutive_5XxErrors().GetValue()
		out.Consecutive_5Xx = wrapperspb.UInt32(v)
		out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(enforce(v))
	case od.GetConsecutiveErrors() > 0:
		out.Consecutive_5Xx = wrapperspb.UInt32(uint32(od.GetConsecutiveErrors()))
		out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(100)
	}
	if g := od.GetConsecutiveGatewayErrors(); g != nil {
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(g.GetValue())
		out.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(enforce(g.GetValue()))
	}
	if od.GetSplitExternalLocalOriginErrors() {
		out.SplitExternalLocalOriginErrors = true
		if l := od.GetConsecutiveLocalOriginFailures(); l != nil {
			out.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(l.GetValue())
			out.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(enforce(l.GetValue()))
		}
	}
	c.OutlierDetection = out
	if p := od.GetMinHealthPercent(); p > 0 {
		commonLB(c).HealthyPanicThreshold = &typev3.Percent{Value: float64(min(p, 100))}
	}
}

// enforce is the enforcement percentage for a threshold: a threshold of 0
// turns that kind of ejection off.
func enforce(threshold uint32) uint32 {
	if threshold == 0 {
		return 0
	}
	return 100
}

// mustAny wraps m in an Any. Marshalling a message built in this package
// cannot fail, so a failure is a programming error.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("generate: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}
