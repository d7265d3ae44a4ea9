package envoy

import (
	"strconv"
	"strings"

	"github.com/meshd/meshd/modules/pilot/generate"
	"github.com/meshd/meshd/modules/pilot/index"
	"github.com/meshd/meshd/modules/pilot/model"
)

// Names meshd gives Envoy resources. They are Istio's, so an Istio user
// reading /debug/config_dump, istioctl proxy-config output or an
// EnvoyFilter written for Istio finds the same names.
const (
	// VirtualOutboundListener receives everything the workload sends
	// (iptables redirects it to VirtualOutboundPort) and hands each
	// connection to the listener for its original destination.
	VirtualOutboundListener = "virtualOutbound"
	// VirtualInboundListener receives everything sent to the workload.
	VirtualInboundListener = "virtualInbound"
	// VirtualOutboundPort and VirtualInboundPort are Istio's capture ports.
	VirtualOutboundPort uint32 = 15001
	VirtualInboundPort  uint32 = 15006

	// PassthroughCluster forwards to the original destination (ALLOW_ANY).
	PassthroughCluster = "PassthroughCluster"
	// BlackHoleCluster has no endpoints: connections to it are closed
	// (REGISTRY_ONLY, and loops back into the capture ports).
	BlackHoleCluster = "BlackHoleCluster"
	// InboundPassthroughCluster forwards inbound traffic for ports no
	// service declares to the workload unchanged.
	InboundPassthroughCluster = "InboundPassthroughCluster"

	// Filter chain names.
	PassthroughFilterChain         = "PassthroughFilterChain"
	VirtualOutboundCatchAllChain   = "virtualOutbound-catchall-tcp"
	VirtualOutboundBlackholeChain  = "virtualOutbound-blackhole"
	VirtualInboundBlackholeChain   = "virtualInbound-blackhole"
	VirtualInboundPassthroughChain = VirtualInboundListener

	// AllowAnyVirtualHost and BlockAllVirtualHost are the catch-all
	// virtual hosts that end every sidecar outbound route configuration.
	AllowAnyVirtualHost = "allow_any"
	BlockAllVirtualHost = "block_all"

	// SDSCluster is the bootstrap cluster that reaches the node agent's
	// SDS server (workload certificate and trust bundle).
	SDSCluster = generate.SDSCluster
	// XDSCluster is the bootstrap cluster that reaches meshd.
	XDSCluster = "xds-grpc"
	// WorkloadSecret is the SDS name of the workload's own certificate.
	WorkloadSecret = generate.SecretDefault
	// RootSecret is the SDS name of the trust bundle.
	RootSecret = generate.SecretRootCA

	// Wildcard is the listener address of listeners that are not bound to
	// a service's virtual IP.
	Wildcard = "0.0.0.0"
)

// reservedPort reports whether port belongs to Envoy's own listeners on the
// wildcard address: the capture ports 15001 and 15006, and the bootstrap's
// health (15021) and Prometheus (15090) ports. A service port among them
// gets no wildcard listener, as in Istio; Envoy would refuse two
// listeners on one address.
func reservedPort(port uint32) bool {
	switch port {
	case VirtualOutboundPort, VirtualInboundPort, 15021, 15090:
		return true
	}
	return false
}

// BootstrapClusters are clusters Envoy's bootstrap defines; resources may
// refer to them although no CDS response carries them.
var BootstrapClusters = []string{SDSCluster, XDSCluster}

// ListenerName is Istio's listener name: <bind>_<port> (0.0.0.0_8080,
// 10.0.0.1_3306). Inbound filter chains use the same form.
func ListenerName(bind string, port uint32) string {
	return bind + "_" + strconv.FormatUint(uint64(port), 10)
}

// SidecarRouteName is the route configuration of a sidecar's outbound
// HTTP listener on port: the port number ("80", "9080").
func SidecarRouteName(port uint32) string { return strconv.FormatUint(uint64(port), 10) }

// GatewayHTTPRouteName is the route configuration of a gateway's plain
// HTTP servers on port: http.<port>, with .<bind> when the server binds
// an address. Every HTTP server on the port shares it.
func GatewayHTTPRouteName(port uint32, bind string) string {
	n := "http." + strconv.FormatUint(uint64(port), 10)
	if bind != "" {
		n += "." + bind
	}
	return n
}

// GatewayHTTPSRouteName is the route configuration of one HTTPS server
// that terminates TLS: https.<port>.<port name>.<gateway>.<namespace>,
// with .<bind> when the server binds an address.
func GatewayHTTPSRouteName(port uint32, portName, gateway, namespace, bind string) string {
	n := "https." + strconv.FormatUint(uint64(port), 10) + "." + portName + "." + gateway + "." + namespace
	if bind != "" {
		n += "." + bind
	}
	return n
}

// VirtualHostName is Istio's virtual host name: <host>:<port>.
func VirtualHostName(host string, port uint32) string {
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}

// InboundVirtualHostName is the single virtual host of an inbound HTTP
// chain: inbound|http|<port>.
func InboundVirtualHostName(port uint32) string {
	return "inbound|http|" + strconv.FormatUint(uint64(port), 10)
}

// Secret name prefixes, as Istio writes them.
const (
	fileCertPrefix = "file-cert:"
	fileRootPrefix = "file-root:"
	// CASecretSuffix names the CA part of a gateway credential.
	CASecretSuffix = "-cacert"
)

// CredentialSecretName is the SDS name of a Gateway server's
// credentialName: kubernetes://<name>, unless the name already says its
// type (kubernetes://, kubernetes-gateway://, configmap://); "builtin://"
// means the gateway's own workload certificate.
func CredentialSecretName(credentialName string) string {
	if strings.HasPrefix(credentialName, "builtin://") {
		return WorkloadSecret
	}
	return generate.CredentialSecretName(credentialName)
}

// CredentialCASecretName is the SDS name of the client CA that MUTUAL
// servers verify clients with: the credential's name plus -cacert.
func CredentialCASecretName(credentialName string) string {
	return CredentialSecretName(credentialName) + CASecretSuffix
}

// FileCertSecretName is the SDS name the node agent serves a certificate
// and key from files under (serverCertificate and privateKey).
func FileCertSecretName(cert, key string) string { return fileCertPrefix + cert + "~" + key }

// FileRootSecretName is the SDS name of a CA bundle file (caCertificates).
func FileRootSecretName(ca string) string { return fileRootPrefix + ca }

// HostDomains returns the domains of a sidecar virtual host for svc, seen
// from a proxy in namespace ns: the host name, its absolute form with a
// trailing dot, the short names Kubernetes DNS resolves from ns
// (reviews, reviews.shop, reviews.shop.svc for reviews.shop.svc.<domain>;
// only the namespaced ones from another namespace), and the service's
// addresses. Ports are left out: route configurations set
// ignore_port_in_host_matching, as Istio's do.
func HostDomains(svc *model.Service, ns, clusterDomain string) []string {
	h := svc.Hostname
	out := make([]string, 0, 6+len(svc.Addresses))
	out = append(out, h)
	if !strings.HasPrefix(h, "*") {
		out = append(out, h+".")
	}
	out = append(out, shortNames(h, ns, clusterDomain)...)
	for _, a := range svc.Addresses {
		if a != "" && a != Wildcard && !strings.ContainsRune(a, '/') {
			out = append(out, a)
		}
	}
	return out
}

// shortNames returns the names a Kubernetes-style host
// <name>.<ns>.svc.<clusterDomain> is also reachable by from namespace ns.
func shortNames(host, ns, clusterDomain string) []string {
	suffix := ".svc." + clusterDomain
	base, ok := strings.CutSuffix(host, suffix)
	if !ok || clusterDomain == "" {
		return nil
	}
	name, svcNS, ok := strings.Cut(base, ".")
	if !ok || name == "" || svcNS == "" || strings.ContainsRune(svcNS, '.') {
		return nil
	}
	if svcNS == ns {
		return []string{name, base, base + ".svc"}
	}
	return []string{base, base + ".svc"}
}

// inboundClusterName is the cluster of an inbound port.
func inboundClusterName(port uint32) string { return index.InboundClusterName(port) }
