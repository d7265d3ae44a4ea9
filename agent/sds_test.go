package agent

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	xdsapi "github.com/meshd/meshd/xds/api"
)

// sdsClient is what Envoy does with the agent's socket: a secret stream
// asking for names, acknowledging each response.
type sdsClient struct {
	t      testing.TB
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
	names  []string
}

func dialSDS(t testing.TB, socket string, names ...string) *sdsClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sdsClient{t: t, stream: stream, names: names}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~127.0.0.1~vm-1.shop~shop.svc.cluster.local"},
		TypeUrl: xdsapi.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	return c
}

// next receives a response, acknowledges it and returns its secrets.
func (c *sdsClient) next() map[string]*tlsv3.Secret {
	c.t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.GetResources() {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			c.t.Fatal(err)
		}
		out[s.GetName()] = &s
	}
	if err := c.stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xdsapi.SecretType, ResourceNames: c.names,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// TestSDSServesAndPushes: Envoy gets the workload certificate as "default"
// and the bundle as "ROOTCA", and a new certificate the moment it renews.
func TestSDSServesAndPushes(t *testing.T) {
	m := startMeshd(t, "", "", nil)
	cfg := agentConfig(t, m, t.TempDir(), nil)
	writeToken(t, cfg, m.token("shop", "billing", 1))
	ta := startAgent(t, cfg)
	first := ta.ready()

	sds := dialSDS(t, cfg.SDS.Socket, "default", "ROOTCA")
	got := sds.next()
	def, root := got["default"], got["ROOTCA"]
	if def == nil || root == nil {
		t.Fatalf("got %v", got)
	}
	pair, err := tls.X509KeyPair(def.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), def.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if pair.Leaf.URIs[0].String() != cfg.SPIFFEID() || pair.Leaf.SerialNumber.Cmp(first.leaf.SerialNumber) != 0 {
		t.Fatalf("default is %v serial %x", pair.Leaf.URIs, pair.Leaf.SerialNumber)
	}
	bundle, _ := m.ca.TrustBundle()
	if string(root.GetValidationContext().GetTrustedCa().GetInlineBytes()) != string(bundle) {
		t.Fatal("ROOTCA is not meshd's bundle")
	}

	ta.a.kickRenew()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		got := sds.next()
		if d := got["default"]; d != nil {
			pair, err := tls.X509KeyPair(d.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), d.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
			if err != nil {
				t.Fatal(err)
			}
			if pair.Leaf.SerialNumber.Cmp(first.leaf.SerialNumber) != 0 {
				return
			}
		}
	}
	t.Fatal("renewed certificate not pushed")
}
