package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
)

// bootstrapAgent is an agent whose config is complete, for rendering
// bootstraps without a control plane.
func bootstrapAgent(t *testing.T, edit func(*Config)) *Agent {
	t.Helper()
	cfg := Default()
	cfg.DataDir = "/var/lib/meshd-agent"
	cfg.ControlPlane.Address = "meshd.example.internal:15012"
	cfg.ControlPlane.RootPin = "sha256:" + strings.Repeat("ab", 32)
	cfg.Identity = IdentityConfig{TrustDomain: "example.org", Namespace: "shop", ServiceAccount: "billing", JoinTokenFile: "/etc/meshd-agent/join-token"}
	cfg.Workload.Name, cfg.Workload.Address, cfg.Workload.Service = "billing-1", "10.0.0.7", "billing"
	cfg.Workload.Labels = map[string]string{"app": "billing", "version": "v1"}
	cfg.Workload.Locality = "eu-west/eu-west-1a"
	cfg.Workload.Ports = []PortConfig{{Name: "grpc", Port: 7070, Protocol: "GRPC"}}
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.complete(); err != nil {
		t.Fatal(err)
	}
	a, err := New(&cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestEnvoyBootstrap: the bootstrap passes go-control-plane's ValidateAll
// (EnvoyBootstrap runs it) after a round trip through the JSON Envoy reads,
// reaches meshd over mTLS with the agent's SDS secrets, and describes the
// workload.
func TestEnvoyBootstrap(t *testing.T) {
	for _, serverName := range []string{"", "127.0.0.1"} {
		a := bootstrapAgent(t, func(c *Config) { c.ControlPlane.ServerName = serverName })
		raw, err := a.envoyBootstrapJSON()
		if err != nil {
			t.Fatal(err)
		}
		var b bootstrapv3.Bootstrap
		if err := protojson.Unmarshal(raw, &b); err != nil {
			t.Fatal(err)
		}
		if err := b.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		n := b.GetNode()
		md := n.GetMetadata().GetFields()
		if n.GetId() != "sidecar~10.0.0.7~billing-1.shop~shop.svc.cluster.local" || n.GetCluster() != "billing.shop" ||
			md["NAMESPACE"].GetStringValue() != "shop" || md["SERVICE_ACCOUNT"].GetStringValue() != "billing" ||
			md["LABELS"].GetStructValue().GetFields()["version"].GetStringValue() != "v1" || n.GetLocality().GetZone() != "eu-west-1a" {
			t.Errorf("node: %v", n)
		}
		if md["AUTO_REGISTER_GROUP"] != nil {
			t.Error("Envoy's node must not register the workload; the agent's stream does")
		}
		if b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != xdsCluster {
			t.Error("ADS does not use the xds-grpc cluster")
		}
		clusters := map[string]int{}
		for i, c := range b.GetStaticResources().GetClusters() {
			clusters[c.GetName()] = i
		}
		sds := b.GetStaticResources().GetClusters()[clusters[sdsCluster]]
		if p := sds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath(); p != "/var/lib/meshd-agent/sds.sock" {
			t.Errorf("sds-grpc points at %q", p)
		}
		x := b.GetStaticResources().GetClusters()[clusters[xdsCluster]]
		var up tlsv3.UpstreamTlsContext
		if err := x.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
			t.Fatal(err)
		}
		ctx := up.GetCommonTlsContext()
		if ctx.GetTlsCertificateSdsSecretConfigs()[0].GetName() != "default" ||
			ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" ||
			ctx.GetTlsCertificateSdsSecretConfigs()[0].GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != sdsCluster {
			t.Errorf("xds-grpc TLS: %v", ctx)
		}
		san := ctx.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0]
		switch serverName {
		case "":
			if up.GetSni() != "meshd.example.internal" || san.GetSanType() != tlsv3.SubjectAltNameMatcher_DNS || san.GetMatcher().GetExact() != "meshd.example.internal" {
				t.Errorf("DNS name: sni %q san %v", up.GetSni(), san)
			}
		default:
			if up.GetSni() != "" || san.GetSanType() != tlsv3.SubjectAltNameMatcher_IP_ADDRESS {
				t.Errorf("IP: sni %q san %v", up.GetSni(), san)
			}
		}
	}
}

// TestGRPCBootstrap: grpc-go's own parser takes the bootstrap, whose
// file_watcher instance "default" reads the agent's files.
func TestGRPCBootstrap(t *testing.T) {
	a := bootstrapAgent(t, nil)
	raw, err := a.grpcBootstrapJSON()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := xds.NewXDSResolverWithConfigForTesting(raw); err != nil {
		t.Fatalf("grpc-go rejects the bootstrap: %v\n%s", err, raw)
	}
	var b GRPCBootstrap
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	p := b.CertificateProviders["default"]
	certs := "/var/lib/meshd-agent/certs/"
	if p.PluginName != "file_watcher" || p.Config["certificate_file"] != certs+"cert-chain.pem" ||
		p.Config["private_key_file"] != certs+"key.pem" || p.Config["ca_certificate_file"] != certs+"root-cert.pem" ||
		p.Config["refresh_interval"] != "60s" {
		t.Errorf("provider: %+v", p)
	}
	s := b.XDSServers[0]
	if s.ServerURI != "meshd.example.internal:15012" || s.ChannelCreds[0].Type != "tls" || s.ChannelCreds[0].Config["certificate_file"] != certs+"cert-chain.pem" ||
		s.ChannelCreds[0].Config["refresh_interval"] != "60s" {
		t.Errorf("server: %+v", s)
	}
	if b.Node.ID != "sidecar~10.0.0.7~billing-1.shop~shop.svc.cluster.local" || b.Node.Metadata["GENERATOR"] != "grpc" ||
		b.Node.Locality["region"] != "eu-west" || b.ServerListenerResourceNameTemplate != "xds.istio.io/grpc/lds/inbound/%s" {
		t.Errorf("node: %+v", b)
	}
}

func TestWriteBootstraps(t *testing.T) {
	dir := t.TempDir()
	a := bootstrapAgent(t, func(c *Config) { c.DataDir = dir })
	if err := a.writeBootstraps(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"envoy-bootstrap.json", "grpc-bootstrap.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}
