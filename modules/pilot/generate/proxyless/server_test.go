package proxyless

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/modules/pilot/internal/pilottest"
	"github.com/meshd/meshd/modules/pilot/security"
	xdsapi "github.com/meshd/meshd/xds/api"
)

const serverMesh = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  ports: [{name: grpc, number: 7000, protocol: GRPC}, {name: grpc-admin, number: 7001, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: shop}
spec:
  address: 10.0.0.2
  ports: {grpc: 8080, grpc-admin: 8081}
  labels: {app: echo, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client-1, namespace: clients}
spec:
  address: 10.0.1.1
  labels: {app: client, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client-2, namespace: clients}
spec:
  address: 10.0.1.0
  labels: {app: client, security.istio.io/tlsMode: istio}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  portLevelMtls: {8081: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {principals: [cluster.local/ns/clients/sa/client]}}]}]
`

func echoServer() *xdsapi.Proxy {
	p := pilottest.Proxy(xdsapi.Proxyless, "shop", map[string]string{"app": "echo"}, "")
	p.IP, p.IPs = "10.0.0.2", []string{"10.0.0.2"}
	return p
}

// grpcChecks are what grpc-go requires of a server listener (gRFC A36, as
// grpc-go 1.85 implements it): no listener filters or original
// destination, chains matched only by addresses (it drops chains matching
// destination ports, server names, application protocols or a transport
// protocol other than raw_buffer), one HTTP connection manager whose last
// filter is the router, TLS only through certificate provider instances
// with a root provider when client certificates are required, and no
// server-side SAN matchers.
func grpcChecks(t *testing.T, l *listenerv3.Listener) {
	t.Helper()
	if err := l.ValidateAll(); err != nil {
		t.Errorf("%s: %v", l.GetName(), err)
	}
	if len(l.GetListenerFilters()) > 0 || l.GetUseOriginalDst().GetValue() || l.GetDefaultFilterChain() != nil {
		t.Errorf("%s: listener filters, original destination or a default chain", l.GetName())
	}
	for _, fc := range l.GetFilterChains() {
		m := fc.GetFilterChainMatch()
		if m.GetDestinationPort() != nil || len(m.GetServerNames()) > 0 || len(m.GetApplicationProtocols()) > 0 ||
			(m.GetTransportProtocol() != "" && m.GetTransportProtocol() != "raw_buffer") {
			t.Errorf("%s/%s: grpc-go drops a chain matching %v", l.GetName(), fc.GetName(), m)
		}
		if len(fc.GetFilters()) != 1 {
			t.Fatalf("%s/%s: %d network filters", l.GetName(), fc.GetName(), len(fc.GetFilters()))
		}
		var h hcmv3.HttpConnectionManager
		if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
			t.Fatal(err)
		}
		if err := h.ValidateAll(); err != nil {
			t.Errorf("%s/%s: %v", l.GetName(), fc.GetName(), err)
		}
		hf := h.GetHttpFilters()
		if hf[len(hf)-1].GetName() != "envoy.filters.http.router" {
			t.Errorf("%s/%s: router is not last", l.GetName(), fc.GetName())
		}
		for _, f := range hf[:len(hf)-1] {
			var rb rbachttpv3.RBAC
			if err := f.GetTypedConfig().UnmarshalTo(&rb); err != nil {
				t.Errorf("%s/%s: filter %s is not RBAC: %v", l.GetName(), fc.GetName(), f.GetName(), err)
			} else if err := rb.ValidateAll(); err != nil {
				t.Errorf("%s/%s: %v", l.GetName(), fc.GetName(), err)
			}
		}
		if ts := fc.GetTransportSocket(); ts != nil {
			var d tlsv3.DownstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&d); err != nil {
				t.Fatal(err)
			}
			c := d.GetCommonTlsContext()
			if c.GetTlsCertificateProviderInstance().GetInstanceName() != "default" ||
				c.GetValidationContext().GetCaCertificateProviderInstance().GetCertificateName() != "ROOTCA" ||
				len(c.GetValidationContext().GetMatchSubjectAltNames()) > 0 || len(c.GetTlsCertificateSdsSecretConfigs()) > 0 ||
				!d.GetRequireClientCertificate().GetValue() {
				t.Errorf("%s/%s: TLS context grpc-go would reject or misread: %v", l.GetName(), fc.GetName(), &d)
			}
		}
	}
}

func TestServerListeners(t *testing.T) {
	ix := pilottest.Index(t, serverMesh)
	p := echoServer()
	all := ServerListeners(ix, p, nil)
	names := Names(all)
	for _, want := range []string{
		"grpc/server?xds.resource.listening_address=10.0.0.2:8080",
		"grpc/server?xds.resource.listening_address=0.0.0.0:8081",
		"grpc/server?xds.resource.listening_address=[::]:8080",
		"xds.istio.io/grpc/lds/inbound/10.0.0.2:8081",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("no listener %s in %v", want, names)
		}
	}
	if len(names) != 2*3*2 {
		t.Errorf("%d listeners, want 2 ports x 3 addresses x 2 templates: %v", len(names), names)
	}
	for _, l := range all {
		grpcChecks(t, l)
		host, port, ok := ParseServerListener(l.GetName())
		if sa := l.GetAddress().GetSocketAddress(); !ok || sa.GetAddress() != host || sa.GetPortValue() != port {
			t.Errorf("%s: address %v does not match its name", l.GetName(), sa)
		}
	}

	// Asking by name: only server names of served ports.
	got := Names(ServerListeners(ix, p, []string{"grpc/server?xds.resource.listening_address=10.0.0.2:8081", "echo.shop.svc.cluster.local:7000",
		"grpc/server?xds.resource.listening_address=10.0.0.2:9999", "grpc/server?xds.resource.listening_address=bogus"}))
	if !slices.Equal(got, []string{"grpc/server?xds.resource.listening_address=10.0.0.2:8081"}) {
		t.Errorf("by name: %v", got)
	}

	// Port 8080 inherits PERMISSIVE: mTLS for the mesh's addresses (the
	// two clients aggregate into one /31, the server is a /32),
	// plaintext for the rest; 8081 is STRICT: one mTLS chain.
	chains := func(port uint32) []*listenerv3.FilterChain {
		return ServerListeners(ix, p, []string{"grpc/server?xds.resource.listening_address=10.0.0.2:" + strconv.FormatUint(uint64(port), 10)})[0].GetFilterChains()
	}
	perm := chains(8080)
	if len(perm) != 2 || perm[0].GetName() != security.GRPCChainMTLS || perm[0].GetTransportSocket() == nil || perm[1].GetTransportSocket() != nil {
		t.Fatalf("PERMISSIVE chains: %v", perm)
	}
	var ranges []string
	for _, r := range perm[0].GetFilterChainMatch().GetSourcePrefixRanges() {
		ranges = append(ranges, r.GetAddressPrefix()+"/"+strconv.FormatUint(uint64(r.GetPrefixLen().GetValue()), 10))
	}
	if strings.Join(ranges, " ") != "10.0.0.2/32 10.0.1.0/31" {
		t.Errorf("mesh source ranges: %v", ranges)
	}
	if strict := chains(8081); len(strict) != 1 || strict[0].GetFilterChainMatch() != nil || strict[0].GetTransportSocket() == nil {
		t.Errorf("STRICT chains: %v", strict)
	}

	// A pure client serves nothing and gets no server listeners, and no
	// key part, so clients keep sharing one group.
	client := pilottest.Proxy(xdsapi.Proxyless, "clients", nil, "")
	if ServerListeners(ix, client, nil) != nil || ServerKeyPart(ix, client) != "" {
		t.Error("a client gets server listeners or a key part")
	}
	if k := (Servers{}).KeyPart(ix, p, xdsapi.ListenerType); !strings.Contains(k, "10.0.0.2") || !strings.Contains(k, "ap=shop/echo") {
		t.Errorf("server key part %q lacks the address or the policy", k)
	}
	if (Servers{}).KeyPart(ix, p, xdsapi.ClusterType) != "" {
		t.Error("server listeners add to the CDS key")
	}
}

func TestParseServerListener(t *testing.T) {
	for name, want := range map[string]string{
		"grpc/server?xds.resource.listening_address=10.0.0.2:8080": "10.0.0.2 8080",
		"grpc/server?xds.resource.listening_address=[::]:80":       ":: 80",
		"xds.istio.io/grpc/lds/inbound/0.0.0.0:9000":               "0.0.0.0 9000",
		"grpc/server?xds.resource.listening_address=host:80":       "",
		"echo.shop.svc.cluster.local:7000":                         "",
	} {
		host, port, ok := ParseServerListener(name)
		got := ""
		if ok {
			got = host + " " + strconv.FormatUint(uint64(port), 10)
		}
		if got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
}
