package generate

import (
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/security/authn"
)

// Secret and certificate provider names. Envoy asks for its certificates
// over SDS by these names, the ones Istio's agent serves, so a proxy
// bootstrapped by either agent finds them; proxyless clients name the same
// two in their bootstrap's certificate_providers.
const (
	// SecretDefault is the workload's own certificate and key.
	SecretDefault = "default"
	// SecretRootCA is the mesh trust bundle.
	SecretRootCA = "ROOTCA"
	// SecretFileCertPrefix and SecretFileRootPrefix name certificates a
	// DestinationRule gives as files: file-cert:<cert>~<key> and
	// file-root:<ca>.
	SecretFileCertPrefix = "file-cert:"
	SecretFileRootPrefix = "file-root:"
	// CertProviderInstance is the certificate provider instance a
	// proxyless client's bootstrap must define (Istio's gRPC bootstrap
	// calls it "default" too).
	CertProviderInstance = "default"
	// TransportSocketTLS is the name Envoy and grpc-go require for TLS.
	TransportSocketTLS = "envoy.transport_sockets.tls"
	// SDSCluster is the Envoy bootstrap cluster of the node agent's SDS
	// server. The workload's certificate and files a rule names are served
	// there, on the node, so private keys never pass through meshd.
	SDSCluster = "sds-grpc"
	// CredentialPrefix is the SDS name prefix of a credentialName, which
	// meshd serves over ADS (Istio's kubernetes://<name>).
	CredentialPrefix = "kubernetes://"
	// CASecretSuffix names the CA part of a credential.
	CASecretSuffix = "-cacert"
)

// applyTLS sets the cluster's upstream TLS from a DestinationRule's tls
// settings, or auto mTLS when the rule says nothing (see autoMTLS).
func applyTLS(s *Scope, c *clusterv3.Cluster, r ClusterRef, tls *networking.ClientTLSSettings) {
	if tls == nil {
		switch {
		case s.Flavor == Envoy && autoMTLS(s, r, c):
			c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{
				{Name: "tlsMode-istio", Match: tlsModeIstioMatch, TransportSocket: s.istioMutualSocket(r)},
				plaintextMatch,
			}
		case s.Flavor == Proxyless && s.MTLSCapable:
			if up := autoUpstream(s, r); up.MTLS {
				c.TransportSocket = tlsSocket(proxylessAutoMTLS(r, up))
			}
		}
		return
	}
	var ctx *tlsv3.UpstreamTlsContext
	switch tls.GetMode() {
	case networking.ClientTLSSettings_DISABLE:
		return
	case networking.ClientTLSSettings_ISTIO_MUTUAL:
		if len(tls.GetSubjectAltNames()) == 0 && tls.GetSni() == "" {
			c.TransportSocket = s.istioMutualSocket(r)
			return
		}
		ctx = istioMutual(s, r, tls)
	case networking.ClientTLSSettings_SIMPLE, networking.ClientTLSSettings_MUTUAL:
		ctx = originate(s, r, tls)
	default:
		return
	}
	c.TransportSocket = tlsSocket(ctx)
}

// autoMTLS reports whether Envoy should send mTLS to the endpoints that
// accept it: in-mesh services with endpoints the mesh knows, unless their
// PeerAuthentication disables mTLS for the whole service. Which endpoints
// accept it is their EDS metadata's business (lbEndpoint).
func autoMTLS(s *Scope, r ClusterRef, c *clusterv3.Cluster) bool {
	if r.Service.MeshExternal || c.GetType() != clusterv3.Cluster_EDS {
		return false
	}
	return !authn.For(s.Index).ServiceDisabled(r.Service)
}

// autoUpstream is auto mTLS for proxyless clients, which cannot choose per
// endpoint: mTLS when every endpoint of the cluster accepts it, verified
// against the endpoints' identities (authn.AutoUpstream).
func autoUpstream(s *Scope, r ClusterRef) authn.Upstream {
	return authn.For(s.Index).AutoUpstream(r.Service, index.SubsetEndpoints(r.Service, r.Port.Number, r.Subset), r.EDS())
}

// proxylessAutoMTLS is the UpstreamTlsContext of auto mTLS for grpc-go:
// the bootstrap's certificate provider for identity and roots, the
// destination's SPIFFE IDs (or its namespace's prefix while it has no
// endpoints) in match_subject_alt_names.
func proxylessAutoMTLS(r ClusterRef, up authn.Upstream) *tlsv3.UpstreamTlsContext {
	var sans []*matcherv3.StringMatcher
	for _, id := range up.SANs {
		sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
	}
	if up.Prefix != "" {
		sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: up.Prefix}})
	}
	sni := "outbound_." + strconv.FormatUint(uint64(r.Port.Number), 10) + "_." + r.SubsetName() + "_." + r.Service.Hostname
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: providerContext(true, sans), Sni: sni}
}

// Shared parts of auto mTLS: the match of endpoints that accept Istio
// mTLS and the plaintext socket for the others.
var (
	tlsModeIstioMatch = &structpb.Struct{Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("istio")}}
	plaintextMatch    = &clusterv3.Cluster_TransportSocketMatch{
		Name:  "tlsMode-disabled",
		Match: &structpb.Struct{},
		TransportSocket: &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.raw_buffer",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbufferv3.RawBuffer{})},
		},
	}
)

type mtlsKey struct {
	namespace string
	h2        bool
}

// istioMutualSocket is the mesh mTLS socket of a cluster. Every cluster of
// a namespace's services shares the CommonTlsContext (certificates, trust
// bundle, peer check) and differs only in SNI, so the context is encoded
// once per scope and the SNI appended: a cluster costs an append instead of
// a marshal.
func (s *Scope) istioMutualSocket(r ClusterRef) *corev3.TransportSocket {
	k := mtlsKey{r.Service.Namespace, r.Port.Protocol.IsHTTP2()}
	common, ok := s.mtls[k]
	if !ok {
		ctx := istioMutual(s, r, nil)
		b, err := marshalDeterministic(ctx.GetCommonTlsContext())
		if err != nil {
			return tlsSocket(ctx)
		}
		if s.mtls == nil {
			s.mtls = map[mtlsKey][]byte{}
		}
		s.mtls[k], common = b, b
	}
	sni := "outbound_." + strconv.FormatUint(uint64(r.Port.Number), 10) + "_." + r.SubsetName() + "_." + r.Service.Hostname
	v := make([]byte, 0, len(common)+len(sni)+8)
	v = protowire.AppendTag(v, 1, protowire.BytesType) // common_tls_context
	v = protowire.AppendBytes(v, common)
	v = protowire.AppendTag(v, 2, protowire.BytesType) // sni
	v = protowire.AppendString(v, sni)
	return &corev3.TransportSocket{
		Name:       TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: upstreamTLSType, Value: v}},
	}
}

const upstreamTLSType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

func marshalDeterministic(m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

func tlsSocket(ctx *tlsv3.UpstreamTlsContext) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)},
	}
}

// sdsSecret is a secret from the node agent (the workload's certificate,
// files on the node).
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: AgentSDS()}
}

// credentialSecret is a credentialName secret, served by meshd over ADS.
func credentialSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: ADS()}
}

// AgentSDS is the config source of the node agent's SDS server.
func AgentSDS() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:                   corev3.ApiConfigSource_GRPC,
			TransportApiVersion:       corev3.ApiVersion_V3,
			SetNodeOnFirstMessageOnly: true,
			GrpcServices: []*corev3.GrpcService{{
				TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: SDSCluster}},
			}},
		}},
		ResourceApiVersion: corev3.ApiVersion_V3,
	}
}

// CredentialSecretName is the SDS name of a credentialName:
// kubernetes://<name> unless the name already has a scheme.
func CredentialSecretName(credentialName string) string {
	if strings.Contains(credentialName, "://") {
		return credentialName
	}
	return CredentialPrefix + credentialName
}

// istioMutual is mTLS with the mesh's own certificates. The peer must be a
// workload of the service's namespace in the mesh's trust domain, or one
// of the rule's subjectAltNames when it lists any. The namespace prefix
// (rather than the service accounts of today's endpoints) keeps the check
// independent of endpoints, so an endpoint change stays an EDS-only push.
func istioMutual(s *Scope, r ClusterRef, tls *networking.ClientTLSSettings) *tlsv3.UpstreamTlsContext {
	var sans []*matcherv3.StringMatcher
	if names := tls.GetSubjectAltNames(); len(names) > 0 {
		for _, n := range names {
			sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: n}})
		}
	} else {
		prefix := "spiffe://" + s.Index.Mesh.TrustDomain + "/ns/" + r.Service.Namespace + "/"
		sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}})
	}
	sni := tls.GetSni()
	if sni == "" {
		sni = "outbound_." + strconv.FormatUint(uint64(r.Port.Number), 10) + "_." + r.SubsetName() + "_." + r.Service.Hostname
	}
	if s.Flavor == Proxyless {
		return &tlsv3.UpstreamTlsContext{CommonTlsContext: providerContext(true, sans), Sni: sni}
	}
	typed := make([]*tlsv3.SubjectAltNameMatcher, len(sans))
	for i, m := range sans {
		typed[i] = &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
	}
	alpn := []string{"istio-peer-exchange", "istio"}
	if r.Port.Protocol.IsHTTP2() {
		alpn = []string{"istio-peer-exchange", "istio", "h2"}
	}
	return &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  alpn,
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(SecretDefault)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: typed},
				ValidationContextSdsSecretConfig: sdsSecret(SecretRootCA),
			}},
		},
	}
}

// originate is TLS origination with certificates the rule names: SIMPLE
// verifies the server, MUTUAL also presents a client certificate.
// credentialName is a secret meshd serves over ADS (kubernetes://<name>,
// its CA in <name>-cacert, Istio's convention); file paths become
// file-cert:/file-root: secrets the node agent serves.
//
// Proxyless clients cannot load certificates a rule names (grpc-go takes
// certificates only from its bootstrap's providers), so they use the
// bootstrap's provider for both, with the rule's subjectAltNames.
func originate(s *Scope, r ClusterRef, tls *networking.ClientTLSSettings) *tlsv3.UpstreamTlsContext {
	mutual := tls.GetMode() == networking.ClientTLSSettings_MUTUAL
	sni := tls.GetSni()
	if sni == "" && !strings.HasPrefix(r.Service.Hostname, "*") {
		sni = r.Service.Hostname
	}
	var sans []*matcherv3.StringMatcher
	for _, n := range tls.GetSubjectAltNames() {
		sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: n}})
	}
	if s.Flavor == Proxyless {
		return &tlsv3.UpstreamTlsContext{CommonTlsContext: providerContext(mutual, sans), Sni: sni}
	}
	common := &tlsv3.CommonTlsContext{}
	if mutual {
		switch {
		case tls.GetCredentialName() != "":
			common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{credentialSecret(CredentialSecretName(tls.GetCredentialName()))}
		case tls.GetClientCertificate() != "":
			common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{
				sdsSecret(SecretFileCertPrefix + tls.GetClientCertificate() + "~" + tls.GetPrivateKey()),
			}
		}
	}
	if !tls.GetInsecureSkipVerify().GetValue() {
		var root *tlsv3.SdsSecretConfig
		switch {
		case tls.GetCredentialName() != "":
			root = credentialSecret(CredentialSecretName(tls.GetCredentialName()) + CASecretSuffix)
		case tls.GetCaCertificates() != "":
			root = sdsSecret(SecretFileRootPrefix + tls.GetCaCertificates())
		}
		typed := make([]*tlsv3.SubjectAltNameMatcher, 0, len(sans))
		for _, m := range sans {
			t := tlsv3.SubjectAltNameMatcher_DNS
			if strings.Contains(m.GetExact(), "://") {
				t = tlsv3.SubjectAltNameMatcher_URI
			}
			typed = append(typed, &tlsv3.SubjectAltNameMatcher{SanType: t, Matcher: m})
		}
		switch {
		case root != nil:
			common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: typed},
				ValidationContextSdsSecretConfig: root,
			}}
		case len(typed) > 0:
			common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{
				ValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: typed},
			}
		}
	}
	return &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: common}
}

// providerContext is the CommonTlsContext grpc-go accepts: certificates
// from the bootstrap's provider instances, and SANs in the
// match_subject_alt_names field, the only one it reads (it silently
// ignores match_typed_subject_alt_names, which would skip the check).
func providerContext(identity bool, sans []*matcherv3.StringMatcher) *tlsv3.CommonTlsContext {
	c := &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: SecretRootCA},
			MatchSubjectAltNames:          sans,
		}},
	}
	if identity {
		c.TlsCertificateProviderInstance = &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: SecretDefault}
	}
	return c
}
