// Package load is meshd's xDS load driver: a synthetic mesh, an xDS server
// process serving it (meshd's server, or a baseline on go-control-plane's
// SnapshotCache with one snapshot per node), and thousands of simulated
// proxies on real gRPC streams over loopback that acknowledge every
// response. It measures wall time, the server's CPU seconds (getrusage),
// bytes on the wire, RSS and Go heap after GC for the scenarios in
// docs/benchmarks.md. cmd/meshload is its command line.
//
// The server runs in its own process so its CPU and memory are measured
// apart from the simulated proxies'.
package load

import (
	"fmt"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names the simulated proxies subscribe to. Proxies derive them from the
// model's size instead of parsing what they receive, which keeps the
// driver's own CPU low.
const (
	ListenerName = "virtualOutbound"
	RouteName    = "80"
	namespace    = "load"
)

// ClusterName is service i's cluster (and ClusterLoadAssignment) name,
// Istio style.
func ClusterName(i int) string {
	return fmt.Sprintf("outbound|80||svc-%d.%s.svc.cluster.local", i, namespace)
}

// Model is a synthetic mesh: services with endpoints, and a generation
// counter that a full push bumps so every cluster changes.
type Model struct {
	mu sync.Mutex
	// Services is the number of services.
	Services int
	// Endpoints per service; Big of them for service 0.
	Endpoints, Big int
	gen            int
	epGen          int // bumps the first endpoint of service 0
}

// NewModel returns a model of n services with one endpoint each except
// service 0, which has big.
func NewModel(n, big int) *Model { return &Model{Services: n, Endpoints: 1, Big: big} }

// Bump changes every cluster (a full push).
func (m *Model) Bump() {
	m.mu.Lock()
	m.gen++
	m.mu.Unlock()
}

// MoveEndpoint changes one endpoint of service 0 (an endpoint-only push).
func (m *Model) MoveEndpoint() {
	m.mu.Lock()
	m.epGen++
	m.mu.Unlock()
}

func (m *Model) state() (n, eps, big, gen, epGen int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Services, m.Endpoints, m.Big, m.gen, m.epGen
}

var ads = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}

// Cluster returns an Istio-like outbound cluster for service i (about
// 1 kB encoded): EDS over ADS, circuit breakers, outlier detection, HTTP/2
// options, Istio metadata, and an mTLS transport socket match with SDS
// certificates and a SPIFFE SAN check, like istiod generates.
func Cluster(i, gen int) *clusterv3.Cluster {
	name := ClusterName(i)
	host := fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, namespace)
	meta, _ := structpb.NewStruct(map[string]any{
		"services":              []any{map[string]any{"host": host, "name": fmt.Sprintf("svc-%d", i), "namespace": namespace}},
		"default_original_port": 80,
		"config":                fmt.Sprintf("/apis/networking.istio.io/v1/namespaces/%s/destination-rule/svc-%d-generation-%d", namespace, i, gen),
	})
	h2, _ := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{MaxConcurrentStreams: wrapperspb.UInt32(1073741824)}}}}})
	sds := func(name string) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{
			ApiConfigSource: &corev3.ApiConfigSource{ApiType: corev3.ApiConfigSource_GRPC, TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "sds-grpc"}}}}}}}}
	}
	tls, _ := anypb.New(&tlsv3.UpstreamTlsContext{Sni: "outbound_.80_._." + host, CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds("default")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchSubjectAltNames: []*matcherv3.StringMatcher{{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/svc-%d", namespace, i)}}}},
			ValidationContextSdsSecretConfig: sds("ROOTCA")}},
		AlpnProtocols: []string{"istio-peer-exchange", "istio"}}})
	tlsMode, _ := structpb.NewStruct(map[string]any{"tlsMode": "istio"})
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads, ServiceName: name},
		ConnectTimeout:       durationpb.New(10 * time.Second),
		LbPolicy:             clusterv3.Cluster_LEAST_REQUEST,
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(4294967295), MaxPendingRequests: wrapperspb.UInt32(4294967295),
			MaxRequests: wrapperspb.UInt32(4294967295), MaxRetries: wrapperspb.UInt32(4294967295), TrackRemaining: true}}},
		OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(5), Interval: durationpb.New(10 * time.Second),
			BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(10)},
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{LocalityConfigSpecifier: &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig_{
			LocalityWeightedLbConfig: &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig{}}},
		Metadata:                      &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": meta}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{
			{Name: "tlsMode-istio", Match: tlsMode, TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tls}}},
			{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer"}},
		},
	}
}

// LoadAssignment returns service i's endpoints; for service 0, epGen moves
// the first one.
func LoadAssignment(i, n, epGen int) *endpointv3.ClusterLoadAssignment {
	eps := make([]*endpointv3.LbEndpoint, n)
	for j := range n {
		port := uint32(8080)
		if i == 0 && j == 0 {
			port += uint32(epGen % 1000)
		}
		md, _ := structpb.NewStruct(map[string]any{"workload": fmt.Sprintf("svc-%d-%d;%s;svc-%d;v1;Kubernetes", i, j, namespace, i)})
		eps[j] = &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
				SocketAddress: &corev3.SocketAddress{Address: fmt.Sprintf("10.%d.%d.%d", (i>>8)&255, i&255, j&255), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(1),
			Metadata:            &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": md}},
		}
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: ClusterName(i), Endpoints: []*endpointv3.LocalityLbEndpoints{{
		Locality:            &corev3.Locality{Region: "region", Zone: fmt.Sprintf("zone-%d", i%3)},
		LbEndpoints:         eps,
		LoadBalancingWeight: wrapperspb.UInt32(uint32(n)),
	}}}
}

// Listener is the sidecar's outbound HTTP listener, routes from RDS.
func Listener() *listenerv3.Listener {
	router, _ := anypb.New(&routerv3.Router{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix:     "outbound_0.0.0.0_80",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: RouteName, ConfigSource: ads}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	return &listenerv3.Listener{
		Name:    ListenerName,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}
}

// Routes is the port-80 route table: one virtual host per service.
func Routes(n int) *routev3.RouteConfiguration {
	vhs := make([]*routev3.VirtualHost, n)
	for i := range n {
		host := fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, namespace)
		vhs[i] = &routev3.VirtualHost{Name: host + ":80", Domains: []string{host, fmt.Sprintf("svc-%d", i)}, Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(i)}}}}}}
	}
	return &routev3.RouteConfiguration{Name: RouteName, VirtualHosts: vhs}
}

// Resources returns the model's resources by type, as named messages.
func (m *Model) Resources() (clusters, endpoints, listeners, routes []NamedMessage) {
	n, eps, big, gen, epGen := m.state()
	for i := range n {
		clusters = append(clusters, NamedMessage{ClusterName(i), Cluster(i, gen)})
		k := eps
		if i == 0 {
			k = big
		}
		endpoints = append(endpoints, NamedMessage{ClusterName(i), LoadAssignment(i, k, epGen)})
	}
	listeners = []NamedMessage{{ListenerName, Listener()}}
	routes = []NamedMessage{{RouteName, Routes(n)}}
	return
}

// NamedMessage is a resource and its name.
type NamedMessage struct {
	Name string
	Msg  proto.Message
}
