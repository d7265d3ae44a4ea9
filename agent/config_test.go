package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodConfig = `# agent.yaml
controlPlane:
  address: meshd.example.internal:15012
  rootCertFile: /etc/meshd-agent/root-cert.pem
identity:
  trustDomain: example.org
  namespace: shop
  serviceAccount: billing
  joinTokenFile: /etc/meshd-agent/join-token
  certTTL: 12h
workload:
  name: billing-1
  address: 10.0.0.7
  service: billing
  labels: {app: billing, version: v1}
  workloadGroup: billing
  ports:
  - {name: grpc, port: 7070, protocol: grpc}
  - {name: http, port: 8080, protocol: HTTP}
dataDir: /var/lib/meshd-agent
`

func loadString(t *testing.T, yaml string) (*Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(p)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func TestLoadConfig(t *testing.T) {
	cfg, err := loadString(t, goodConfig)
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]any{
		"serverName defaults to the address host": {cfg.ControlPlane.ServerName, "meshd.example.internal"},
		"protocols are upper-cased":               {cfg.Workload.Ports[0].Protocol, "GRPC"},
		"the first port is probed with tcp":       {cfg.Workload.Probe.Type, "tcp"},
		"the probe port is the first port":        {cfg.Workload.Probe.Port, uint32(7070)},
		"files under the data dir":                {cfg.Files.Dir, "/var/lib/meshd-agent/certs"},
		"socket under the data dir":               {cfg.SDS.Socket, "/var/lib/meshd-agent/sds.sock"},
		"envoy bootstrap under the data dir":      {cfg.Envoy.BootstrapFile, "/var/lib/meshd-agent/envoy-bootstrap.json"},
		"grpc bootstrap under the data dir":       {cfg.GRPCBootstrap.File, "/var/lib/meshd-agent/grpc-bootstrap.json"},
		"cert TTL":                                {cfg.Identity.CertTTL, 12 * time.Hour},
		"identity":                                {cfg.SPIFFEID(), "spiffe://example.org/ns/shop/sa/billing"},
	}
	for what, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s: got %v, want %v", what, c[0], c[1])
		}
	}
}

// TestLoadConfigErrors: strict decoding with file:line, like meshd.yaml.
func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name, old, new, want string
	}{
		{"unknown key", "  certTTL: 12h\n", "  certTTL: 12h\n  certTtl2: 1h\n", ":11: identity.certTtl2: unknown key"},
		{"bad duration", "  certTTL: 12h\n", "  certTTL: twelve\n", `:10: identity.certTTL: time: invalid duration`},
		{"no root", "  rootCertFile: /etc/meshd-agent/root-cert.pem\n", "", ":2: controlPlane: set rootCertFile (the mesh's roots"},
		{"root and pin", "  rootCertFile: /etc/meshd-agent/root-cert.pem\n", "  rootCertFile: /r.pem\n  rootPin: sha256:00\n",
			":5: controlPlane.rootPin: set rootCertFile or rootPin, not both"},
		{"bad pin", "  rootCertFile: /etc/meshd-agent/root-cert.pem\n", "  rootPin: md5:00\n", ":4: controlPlane.rootPin: \"md5:00\": want sha256:"},
		{"namespace", "  namespace: shop\n", "  namespace: Shop\n", `:7: identity.namespace: "Shop" is not a lowercase RFC 1123 label`},
		{"port zero", "  - {name: http, port: 8080, protocol: HTTP}\n", "  - {name: http, port: 8080}\n  - {name: admin, port: 0}\n",
			":20: workload.ports[2].port: 0 is not a port number"},
		{"duplicate port", "  - {name: http, port: 8080, protocol: HTTP}\n", "  - {name: grpc, port: 8080}\n", `:19: workload.ports[1].name: port "grpc" listed twice`},
		{"locality", "  address: 10.0.0.7\n", "  address: 10.0.0.7\n  locality: a/b/c/d\n", `:14: workload.locality: "a/b/c/d" is not region/zone/subzone`},
		{"no token file", "  joinTokenFile: /etc/meshd-agent/join-token\n", "", ":5: identity.joinTokenFile: required"},
		{"probe type", "dataDir:", "  probe: {type: icmp}\ndataDir:", `:20: workload.probe.type: "icmp": want none, tcp, http or grpc`},
		{"no address", "  address: meshd.example.internal:15012\n", "  address: meshd.example.internal\n", `:3: controlPlane.address: "meshd.example.internal" is not host:port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(goodConfig, tt.old) {
				t.Fatalf("%q not in the config", tt.old)
			}
			_, err := loadString(t, strings.Replace(goodConfig, tt.old, tt.new, 1))
			if err == nil || !strings.Contains(err.Error(), "agent.yaml"+tt.want) {
				t.Fatalf("got  %v\nwant agent.yaml%s", err, tt.want)
			}
		})
	}
	if _, err := loadString(t, "- a list\n"); err == nil || !strings.Contains(err.Error(), ":1: config must be a mapping") {
		t.Errorf("list: %v", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "read config") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParsePin(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	colons := strings.ToUpper(strings.TrimSuffix(strings.Repeat("ab:", 32), ":"))
	for _, ok := range []string{"sha256:" + hex, "SHA256:" + colons, "sha256 Fingerprint=" + colons} {
		if _, err := ParsePin(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", hex, "sha256:" + hex[:62], "md5:" + hex, "sha256:zz" + hex[2:]} {
		if _, err := ParsePin(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
