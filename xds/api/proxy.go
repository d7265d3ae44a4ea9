package api

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"github.com/meshd/meshd/core/spiffe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// ProxyType is the kind of xDS client.
type ProxyType string

// Proxy types. Istio's node IDs say "sidecar" or "router"; meshd calls the
// latter a gateway. Proxyless gRPC clients use a plain node ID or say so in
// their metadata.
const (
	Sidecar   ProxyType = "sidecar"
	Gateway   ProxyType = "gateway"
	Proxyless ProxyType = "proxyless"
)

// Node metadata keys meshd reads. They are Istio's, so Istio agents and
// bootstrap files work unchanged.
const (
	MetaNamespace      = "NAMESPACE"
	MetaServiceAccount = "SERVICE_ACCOUNT"
	MetaLabels         = "LABELS"
	MetaClusterID      = "CLUSTER_ID"
	MetaInstanceIPs    = "INSTANCE_IPS"
	// MetaProxyType overrides the type from the node ID: sidecar, gateway
	// (or router), proxyless.
	MetaProxyType = "PROXY_TYPE"
	// MetaGenerator is what Istio's proxyless gRPC bootstrap sets ("grpc").
	MetaGenerator = "GENERATOR"
)

// Proxy is an xDS client as meshd sees it: who it is, parsed once from the
// node of its first request. It is shared and must be treated as read-only.
type Proxy struct {
	// ID is the node ID as sent.
	ID string
	// Type is sidecar, gateway or proxyless.
	Type ProxyType
	// IP is the proxy's address from the node ID or INSTANCE_IPS.
	IP string
	// IPs lists every address from INSTANCE_IPS (IP first).
	IPs []string
	// Name is the workload name (the pod in pod.ns).
	Name string
	// Namespace comes from NAMESPACE, else from the node ID.
	Namespace string
	// DNSDomain is the last part of an Istio node ID (ns.svc.cluster.local).
	DNSDomain string
	// ServiceAccount comes from SERVICE_ACCOUNT.
	ServiceAccount string
	// ClusterID comes from CLUSTER_ID.
	ClusterID string
	// Labels comes from LABELS.
	Labels map[string]string
	// Identity is the proxy's SPIFFE ID: from its verified client
	// certificate when IdentityVerified, otherwise claimed through
	// NAMESPACE and SERVICE_ACCOUNT (empty when either is missing).
	Identity string
	// IdentityVerified says Identity comes from a certificate verified on
	// the TLS port.
	IdentityVerified bool
	// Metadata holds the node's string-valued metadata fields.
	Metadata map[string]string
	// Node is the node as sent, for generators that need more (locality,
	// user agent, client features). Read-only.
	Node *corev3.Node
}

// Limits on node fields, so a client cannot make the server keep arbitrary
// amounts of data per stream.
const (
	maxNodeIDLen     = 1024
	maxMetadataField = 4096
)

// ErrInvalidNode is wrapped by ParseNode errors.
var ErrInvalidNode = errors.New("invalid node")

// ParseNode reads a Proxy from an xDS node. trustDomain builds the claimed
// SPIFFE identity from NAMESPACE and SERVICE_ACCOUNT.
//
// Node IDs come in two forms: Istio's type~ip~pod.namespace~domain
// (sidecar~10.0.0.1~reviews-1.default~default.svc.cluster.local, or router~
// for gateways), and a plain ID for proxyless gRPC clients. A PROXY_TYPE
// metadata field, or GENERATOR=grpc as Istio's gRPC bootstrap writes,
// overrides the type.
func ParseNode(node *corev3.Node, trustDomain string) (*Proxy, error) {
	if node == nil || node.GetId() == "" {
		return nil, fmt.Errorf("%w: no node ID", ErrInvalidNode)
	}
	if len(node.GetId()) > maxNodeIDLen {
		return nil, fmt.Errorf("%w: node ID longer than %d bytes", ErrInvalidNode, maxNodeIDLen)
	}
	p := &Proxy{ID: node.GetId(), Node: node, Metadata: map[string]string{}}
	md := node.GetMetadata().GetFields()
	for k, v := range md {
		if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
			if len(s.StringValue) > maxMetadataField {
				return nil, fmt.Errorf("%w: metadata %s longer than %d bytes", ErrInvalidNode, k, maxMetadataField)
			}
			p.Metadata[k] = s.StringValue
		}
	}

	if parts := strings.Split(p.ID, "~"); len(parts) == 4 {
		switch parts[0] {
		case "sidecar":
			p.Type = Sidecar
		case "router":
			p.Type = Gateway
		default:
			return nil, fmt.Errorf("%w: node ID %q: type %q is not sidecar or router", ErrInvalidNode, p.ID, parts[0])
		}
		if parts[1] != "" {
			if _, err := netip.ParseAddr(parts[1]); err != nil {
				return nil, fmt.Errorf("%w: node ID %q: %q is not an IP address", ErrInvalidNode, p.ID, parts[1])
			}
			p.IP = parts[1]
		}
		name, ns, _ := strings.Cut(parts[2], ".")
		p.Name, p.Namespace = name, ns
		p.DNSDomain = parts[3]
		if p.Namespace == "" {
			p.Namespace, _, _ = strings.Cut(p.DNSDomain, ".")
		}
	} else if strings.Contains(p.ID, "~") {
		return nil, fmt.Errorf("%w: node ID %q has %d '~'-separated parts, want 4 (type~ip~pod.namespace~domain) or a plain ID", ErrInvalidNode, p.ID, len(parts))
	} else {
		p.Type = Proxyless
	}

	switch t := strings.ToLower(p.Metadata[MetaProxyType]); t {
	case "":
	case "sidecar":
		p.Type = Sidecar
	case "gateway", "router":
		p.Type = Gateway
	case "proxyless", "grpc":
		p.Type = Proxyless
	default:
		return nil, fmt.Errorf("%w: %s %q is not sidecar, gateway or proxyless", ErrInvalidNode, MetaProxyType, t)
	}
	if strings.EqualFold(p.Metadata[MetaGenerator], "grpc") {
		p.Type = Proxyless
	}

	if ns := p.Metadata[MetaNamespace]; ns != "" {
		p.Namespace = ns
	}
	p.ServiceAccount = p.Metadata[MetaServiceAccount]
	p.ClusterID = p.Metadata[MetaClusterID]
	if ips := p.Metadata[MetaInstanceIPs]; ips != "" {
		for ip := range strings.SplitSeq(ips, ",") {
			if ip = strings.TrimSpace(ip); ip != "" {
				p.IPs = append(p.IPs, ip)
			}
		}
	}
	switch {
	case p.IP == "" && len(p.IPs) > 0:
		p.IP = p.IPs[0]
	case p.IP != "" && len(p.IPs) == 0:
		p.IPs = []string{p.IP}
	}
	if lv, ok := md[MetaLabels]; ok {
		fields := lv.GetStructValue().GetFields()
		p.Labels = make(map[string]string, len(fields))
		for k, v := range fields {
			p.Labels[k] = v.GetStringValue()
		}
	}
	if p.Namespace != "" && p.ServiceAccount != "" && trustDomain != "" {
		p.Identity = SPIFFEID(trustDomain, p.Namespace, p.ServiceAccount)
	}
	return p, nil
}

// SPIFFEID returns spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return spiffe.ID(trustDomain, namespace, serviceAccount)
}

// ParseSPIFFEID splits an Istio-style SPIFFE ID into trust domain,
// namespace and service account, as strictly as the CA issues them.
func ParseSPIFFEID(id string) (trustDomain, namespace, serviceAccount string, err error) {
	return spiffe.Parse(id)
}

// WithVerifiedIdentity returns a copy of p whose identity is the verified
// SPIFFE ID id. Namespace and service account follow the certificate; a
// node that claims others is refused, since a proxy must not be served
// another namespace's config.
func (p *Proxy) WithVerifiedIdentity(id string) (*Proxy, error) {
	_, ns, sa, err := ParseSPIFFEID(id)
	if err != nil {
		return nil, err
	}
	if p.Namespace != "" && p.Namespace != ns {
		return nil, fmt.Errorf("node claims namespace %q but its certificate is for %s", p.Namespace, id)
	}
	if p.ServiceAccount != "" && p.ServiceAccount != sa {
		return nil, fmt.Errorf("node claims service account %q but its certificate is for %s", p.ServiceAccount, id)
	}
	q := *p
	q.Namespace, q.ServiceAccount = ns, sa
	q.Identity, q.IdentityVerified = id, true
	q.Metadata = maps.Clone(p.Metadata)
	return &q, nil
}
