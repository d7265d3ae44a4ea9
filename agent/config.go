package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/meshd/meshd/core/config"
	"go.yaml.in/yaml/v3"
)

// Config is agent.yaml.
type Config struct {
	ControlPlane  ControlPlaneConfig  `mapstructure:"controlPlane"`
	Identity      IdentityConfig      `mapstructure:"identity"`
	Workload      WorkloadConfig      `mapstructure:"workload"`
	DataDir       string              `mapstructure:"dataDir" doc:"where the agent keeps its key, certificates, bootstrap files and SDS socket (0700; 0750 with files.shareWithGroup)"`
	Files         FilesConfig         `mapstructure:"files"`
	SDS           SDSConfig           `mapstructure:"sds"`
	Envoy         EnvoyConfig         `mapstructure:"envoy"`
	GRPCBootstrap GRPCBootstrapConfig `mapstructure:"grpcBootstrap"`
	Log           LogConfig           `mapstructure:"log"`
}

// ControlPlaneConfig says where meshd is and how to know it is meshd.
type ControlPlaneConfig struct {
	Address      string        `mapstructure:"address" doc:"meshd's xDS and CA address over TLS (modules.xds.tlsAddress, Istio's 15012), host:port"`
	ServerName   string        `mapstructure:"serverName" doc:"name meshd's serving certificate must carry (one of modules.citadel.serving.dnsNames); default: the host of address"`
	RootCertFile string        `mapstructure:"rootCertFile" doc:"PEM file with the mesh's root certificates (meshd ca roots); this or rootPin is required"`
	RootPin      string        `mapstructure:"rootPin" doc:"sha256:<hex> fingerprint of a root certificate (openssl x509 -noout -fingerprint -sha256); the agent fetches the trust bundle and keeps it only if meshd proves a certificate under that root"`
	DialTimeout  time.Duration `mapstructure:"dialTimeout" doc:"how long one connection attempt to meshd may take"`
	RetryMax     time.Duration `mapstructure:"retryMax" doc:"longest wait between attempts to reach meshd (backoff starts at 1s and doubles)"`
}

// IdentityConfig is the workload's SPIFFE identity and how it is obtained.
type IdentityConfig struct {
	TrustDomain    string        `mapstructure:"trustDomain" doc:"meshd's mesh.trustDomain"`
	Namespace      string        `mapstructure:"namespace" doc:"namespace of the workload's identity (spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>)"`
	ServiceAccount string        `mapstructure:"serviceAccount" doc:"service account of the workload's identity"`
	JoinTokenFile  string        `mapstructure:"joinTokenFile" doc:"file holding a join token (meshd ca token create); read only when the agent has no valid certificate: first start, or after being cut off from meshd for longer than a certificate lifetime"`
	CertTTL        time.Duration `mapstructure:"certTTL" doc:"certificate lifetime to ask for; 0: the CA's default (modules.citadel.leaf.defaultTTL). Renewal starts at a random point between 50% and 80% of it"`
}

// WorkloadConfig describes the workload beside the agent.
type WorkloadConfig struct {
	Name          string            `mapstructure:"name" doc:"workload name (a lowercase RFC 1123 name); default: the host name"`
	Address       string            `mapstructure:"address" doc:"IP address other workloads reach this one on; default: the first non-loopback address of the host"`
	Service       string            `mapstructure:"service" doc:"service the workload belongs to, for Envoy's node cluster <service>.<namespace>; default: the workload name"`
	Labels        map[string]string `mapstructure:"labels" doc:"workload labels; ServiceEntry workloadSelectors and DestinationRule subsets select on them"`
	Ports         []PortConfig      `mapstructure:"ports" doc:"ports the workload serves"`
	WorkloadGroup string            `mapstructure:"workloadGroup" doc:"WorkloadGroup (in identity.namespace) to register with; empty: the workload is not registered (a client only)"`
	Locality      string            `mapstructure:"locality" doc:"region/zone/subzone"`
	Network       string            `mapstructure:"network" doc:"network the address belongs to"`
	ClusterDomain string            `mapstructure:"clusterDomain" doc:"meshd's mesh.clusterDomain, for the node ID's DNS domain"`
	Probe         ProbeConfig       `mapstructure:"probe"`
}

// PortConfig is one port of the workload.
type PortConfig struct {
	Name     string `mapstructure:"name" doc:"port name, as the WorkloadGroup and ServiceEntry name it"`
	Port     uint32 `mapstructure:"port" doc:"port number the workload listens on"`
	Protocol string `mapstructure:"protocol" doc:"GRPC, HTTP, HTTP2, TCP, TLS, ...; informational: meshd takes a service's protocols from its ServiceEntry"`
}

// ProbeConfig is the local health check whose result goes to meshd.
type ProbeConfig struct {
	Type             string        `mapstructure:"type" doc:"none, tcp (connect), http (GET, 2xx and 3xx are healthy) or grpc (grpc.health.v1); default: tcp on the first port, none without ports"`
	TLS              bool          `mapstructure:"tls" doc:"probe over mTLS with the workload's own certificate (http and grpc), for servers that accept only mesh clients; the server must present a certificate from the mesh's trust bundle"`
	Host             string        `mapstructure:"host" doc:"host the probe connects to"`
	Port             uint32        `mapstructure:"port" doc:"port the probe connects to; default: the first port"`
	Path             string        `mapstructure:"path" doc:"HTTP path of an http probe"`
	Service          string        `mapstructure:"service" doc:"service name a grpc probe asks about (empty: the whole server)"`
	Interval         time.Duration `mapstructure:"interval" doc:"time between probes"`
	Timeout          time.Duration `mapstructure:"timeout" doc:"how long one probe may take"`
	FailureThreshold int           `mapstructure:"failureThreshold" doc:"consecutive failures that make a healthy workload unhealthy"`
	SuccessThreshold int           `mapstructure:"successThreshold" doc:"consecutive successes that make an unhealthy workload healthy"`
	ReportInterval   time.Duration `mapstructure:"reportInterval" doc:"how often the state is reported to meshd even when it did not change"`
}

// FilesConfig is where the workload's certificate files go.
type FilesConfig struct {
	Dir            string `mapstructure:"dir" doc:"directory with cert-chain.pem, key.pem and root-cert.pem, replaced together on each change; default: <dataDir>/certs"`
	ShareWithGroup bool   `mapstructure:"shareWithGroup" doc:"make the files readable by the agent's group (0640, directories 0750), for applications that run as another user in that group; default: owner only (0600, 0700)"`
}

// SDSConfig is the local SDS server for Envoy.
type SDSConfig struct {
	Socket string `mapstructure:"socket" doc:"Unix socket of the SDS server Envoy gets its certificates from; default: <dataDir>/sds.sock"`
}

// EnvoyConfig is the local Envoy.
type EnvoyConfig struct {
	Enabled           bool          `mapstructure:"enabled" doc:"start and supervise Envoy"`
	Binary            string        `mapstructure:"binary" doc:"Envoy binary, looked up on PATH when it has no slash"`
	BootstrapFile     string        `mapstructure:"bootstrapFile" doc:"where the Envoy bootstrap is written (always, also when enabled is false); default: <dataDir>/envoy-bootstrap.json"`
	AdminAddress      string        `mapstructure:"adminAddress" doc:"Envoy's admin address (host:port); keep it on loopback"`
	Concurrency       int           `mapstructure:"concurrency" doc:"Envoy worker threads (--concurrency); 0: Envoy's default"`
	Args              []string      `mapstructure:"args" doc:"extra Envoy arguments"`
	DrainDuration     time.Duration `mapstructure:"drainDuration" doc:"on stop, how long Envoy drains its listeners before it is told to exit"`
	StopTimeout       time.Duration `mapstructure:"stopTimeout" doc:"how long Envoy may take to exit after SIGTERM before it is killed"`
	RestartBackoff    time.Duration `mapstructure:"restartBackoff" doc:"wait before the first restart of an Envoy that exited; doubles on each further exit"`
	MaxRestartBackoff time.Duration `mapstructure:"maxRestartBackoff" doc:"longest wait between restarts; an Envoy that ran this long starts over at restartBackoff"`
}

// GRPCBootstrapConfig is the bootstrap for proxyless gRPC applications.
type GRPCBootstrapConfig struct {
	File                   string        `mapstructure:"file" doc:"where the gRPC xDS bootstrap is written (point GRPC_XDS_BOOTSTRAP at it); default: <dataDir>/grpc-bootstrap.json"`
	RefreshInterval        time.Duration `mapstructure:"refreshInterval" doc:"how often gRPC's file_watcher re-reads the certificate files; keep it well below 20% of the certificate lifetime"`
	ServerListenerTemplate string        `mapstructure:"serverListenerTemplate" doc:"server_listener_resource_name_template for xDS-enabled gRPC servers (Istio's)"`
}

// LogConfig configures the agent's log.
type LogConfig struct {
	Level  string `mapstructure:"level" doc:"debug, info, warn or error"`
	Format string `mapstructure:"format" doc:"text or json"`
}

// Default returns the defaults.
func Default() Config {
	return Config{
		ControlPlane: ControlPlaneConfig{DialTimeout: 10 * time.Second, RetryMax: 30 * time.Second},
		Identity:     IdentityConfig{TrustDomain: "cluster.local"},
		Workload: WorkloadConfig{
			ClusterDomain: "cluster.local",
			Probe: ProbeConfig{Host: "127.0.0.1", Interval: 5 * time.Second, Timeout: time.Second,
				FailureThreshold: 3, SuccessThreshold: 1, ReportInterval: 30 * time.Second},
		},
		DataDir: "/var/lib/meshd-agent",
		Envoy: EnvoyConfig{Binary: "envoy", AdminAddress: "127.0.0.1:15000", DrainDuration: 5 * time.Second,
			StopTimeout: 10 * time.Second, RestartBackoff: time.Second, MaxRestartBackoff: time.Minute},
		GRPCBootstrap: GRPCBootstrapConfig{RefreshInterval: time.Minute, ServerListenerTemplate: "xds.istio.io/grpc/lds/inbound/%s"},
		Log:           LogConfig{Level: "info", Format: "text"},
	}
}

// LoadConfig reads agent.yaml over the defaults, strictly: an unknown key
// or a value of the wrong type is an error naming the file, line and key,
// as meshd.yaml's are. It fills derived defaults and validates.
func LoadConfig(file string) (*Config, error) {
	cfg := Default()
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	raw := map[string]any{}
	if len(doc.Content) > 0 {
		if doc.Content[0].Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s:%d: config must be a mapping of keys", file, doc.Content[0].Line)
		}
		if err := doc.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	if err := config.Decode(raw, &cfg, ""); err != nil {
		return nil, locate(err, file, &doc)
	}
	if err := cfg.complete(); err != nil {
		return nil, locate(err, file, &doc)
	}
	return &cfg, nil
}

// locate adds the file and line to a config.KeyError.
func locate(err error, file string, doc *yaml.Node) error {
	var ke *config.KeyError
	if !errors.As(err, &ke) {
		return fmt.Errorf("%s: %w", file, err)
	}
	if ke.File == "" {
		ke.File = file
		ke.Line = config.LineOf(doc, ke.Path)
	}
	return err
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	nsRE   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

func keyErr(path, format string, args ...any) error {
	return &config.KeyError{Path: path, Err: fmt.Errorf(format, args...)}
}

// complete fills derived defaults and validates, returning the first
// problem as a KeyError.
func (c *Config) complete() error {
	cp := &c.ControlPlane
	host, _, err := net.SplitHostPort(cp.Address)
	switch {
	case cp.Address == "":
		return keyErr("controlPlane.address", "required: meshd's TLS address, host:port (modules.xds.tlsAddress)")
	case err != nil:
		return keyErr("controlPlane.address", "%q is not host:port", cp.Address)
	}
	if cp.ServerName == "" {
		cp.ServerName = host
	}
	switch {
	case cp.RootCertFile == "" && cp.RootPin == "":
		return keyErr("controlPlane", "set rootCertFile (the mesh's roots, from meshd ca roots) or rootPin (sha256:<fingerprint> of a root); without either the agent cannot tell meshd from an impostor")
	case cp.RootCertFile != "" && cp.RootPin != "":
		return keyErr("controlPlane.rootPin", "set rootCertFile or rootPin, not both")
	case cp.RootPin != "":
		if _, err := ParsePin(cp.RootPin); err != nil {
			return keyErr("controlPlane.rootPin", "%v", err)
		}
	}
	if cp.DialTimeout <= 0 || cp.RetryMax <= 0 {
		return keyErr("controlPlane", "dialTimeout and retryMax must be positive")
	}

	id := &c.Identity
	switch {
	case id.TrustDomain == "":
		return keyErr("identity.trustDomain", "required")
	case !nsRE.MatchString(id.Namespace):
		return keyErr("identity.namespace", "%q is not a lowercase RFC 1123 label", id.Namespace)
	case !nameRE.MatchString(id.ServiceAccount):
		return keyErr("identity.serviceAccount", "%q is not a lowercase RFC 1123 name", id.ServiceAccount)
	case id.JoinTokenFile == "":
		return keyErr("identity.joinTokenFile", "required: where the agent finds a join token when it has no valid certificate")
	case id.CertTTL < 0:
		return keyErr("identity.certTTL", "must not be negative")
	}

	w := &c.Workload
	if w.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return keyErr("workload.name", "not set, and the host name is unknown: %v", err)
		}
		w.Name = strings.ToLower(strings.SplitN(h, ".", 2)[0])
	}
	if len(w.Name) > 253 || !nameRE.MatchString(w.Name) {
		return keyErr("workload.name", "%q is not a lowercase RFC 1123 name", w.Name)
	}
	if w.Address == "" {
		a, err := hostAddress()
		if err != nil {
			return keyErr("workload.address", "not set, and %v", err)
		}
		w.Address = a
	}
	if _, err := netip.ParseAddr(w.Address); err != nil {
		return keyErr("workload.address", "%q is not an IP address", w.Address)
	}
	seen := map[string]bool{}
	for i, p := range w.Ports {
		path := fmt.Sprintf("workload.ports[%d]", i)
		switch {
		case !nsRE.MatchString(p.Name):
			return keyErr(path+".name", "%q is not a port name (lowercase letters, digits and '-')", p.Name)
		case seen[p.Name]:
			return keyErr(path+".name", "port %q listed twice", p.Name)
		case p.Port == 0 || p.Port > 65535:
			return keyErr(path+".port", "%d is not a port number", p.Port)
		}
		seen[p.Name] = true
		w.Ports[i].Protocol = strings.ToUpper(p.Protocol)
	}
	if w.WorkloadGroup != "" && !nameRE.MatchString(w.WorkloadGroup) {
		return keyErr("workload.workloadGroup", "%q is not a lowercase RFC 1123 name", w.WorkloadGroup)
	}
	if w.Locality != "" && strings.Count(w.Locality, "/") > 2 {
		return keyErr("workload.locality", "%q is not region/zone/subzone", w.Locality)
	}
	if err := w.Probe.complete(w.Ports); err != nil {
		return err
	}

	if c.DataDir == "" {
		return keyErr("dataDir", "required")
	}
	if c.Files.Dir == "" {
		c.Files.Dir = filepath.Join(c.DataDir, "certs")
	}
	if c.SDS.Socket == "" {
		c.SDS.Socket = filepath.Join(c.DataDir, "sds.sock")
	}
	if len(c.SDS.Socket) > 100 {
		return keyErr("sds.socket", "%q is longer than a Unix socket path may be (about 100 bytes)", c.SDS.Socket)
	}
	e := &c.Envoy
	if e.BootstrapFile == "" {
		e.BootstrapFile = filepath.Join(c.DataDir, "envoy-bootstrap.json")
	}
	if _, _, err := net.SplitHostPort(e.AdminAddress); err != nil {
		return keyErr("envoy.adminAddress", "%q is not host:port", e.AdminAddress)
	}
	if e.Enabled && e.Binary == "" {
		return keyErr("envoy.binary", "required when envoy.enabled")
	}
	if e.DrainDuration < 0 || e.StopTimeout <= 0 || e.RestartBackoff <= 0 || e.MaxRestartBackoff < e.RestartBackoff {
		return keyErr("envoy", "need drainDuration >= 0, stopTimeout > 0 and 0 < restartBackoff <= maxRestartBackoff")
	}
	g := &c.GRPCBootstrap
	if g.File == "" {
		g.File = filepath.Join(c.DataDir, "grpc-bootstrap.json")
	}
	if g.RefreshInterval <= 0 {
		return keyErr("grpcBootstrap.refreshInterval", "must be positive")
	}
	if strings.Count(g.ServerListenerTemplate, "%s") != 1 {
		return keyErr("grpcBootstrap.serverListenerTemplate", "must contain %%s exactly once")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return keyErr("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return keyErr("log.format", "%q: want text or json", c.Log.Format)
	}
	return nil
}

func (p *ProbeConfig) complete(ports []PortConfig) error {
	if p.Type == "" {
		p.Type = "tcp"
		if len(ports) == 0 {
			p.Type = "none"
		}
	}
	switch p.Type {
	case "none":
		return nil
	case "tcp", "http", "grpc":
	default:
		return keyErr("workload.probe.type", "%q: want none, tcp, http or grpc", p.Type)
	}
	if p.Port == 0 {
		if len(ports) == 0 {
			return keyErr("workload.probe.port", "required: the workload declares no ports")
		}
		p.Port = ports[0].Port
	}
	if p.TLS && p.Type == "tcp" {
		return keyErr("workload.probe.tls", "applies to http and grpc probes")
	}
	if p.Type == "http" && p.Path == "" {
		p.Path = "/"
	}
	if p.Interval <= 0 || p.Timeout <= 0 || p.FailureThreshold < 1 || p.SuccessThreshold < 1 || p.ReportInterval <= 0 {
		return keyErr("workload.probe", "interval, timeout and reportInterval must be positive, the thresholds at least 1")
	}
	return nil
}

// hostAddress returns the first global unicast address of the host,
// IPv4 first.
func hostAddress() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("cannot list the host's addresses: %w", err)
	}
	var v6 string
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || !n.IP.IsGlobalUnicast() {
			continue
		}
		if n.IP.To4() != nil {
			return n.IP.String(), nil
		}
		if v6 == "" {
			v6 = n.IP.String()
		}
	}
	if v6 != "" {
		return v6, nil
	}
	return "", errors.New("the host has no non-loopback address; set workload.address")
}

// SPIFFEID is the identity the agent asks for.
func (c *Config) SPIFFEID() string {
	return "spiffe://" + c.Identity.TrustDomain + "/ns/" + c.Identity.Namespace + "/sa/" + c.Identity.ServiceAccount
}

// ParsePin reads a root pin: "sha256:" and 64 hex digits, colons allowed
// (as openssl prints fingerprints).
func ParsePin(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	if !ok {
		// openssl prints "sha256 Fingerprint=AB:CD:..."
		if _, after, found := strings.Cut(strings.ToLower(s), "fingerprint="); found {
			rest, ok = after, true
		}
	}
	if !ok {
		return nil, fmt.Errorf("%q: want sha256:<64 hex digits>", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(rest, ":", ""))
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%q: want sha256:<64 hex digits>", s)
	}
	return b, nil
}

// Pin returns the pin of a certificate (DER): sha256:<hex>.
func Pin(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// configReference renders agent.yaml's keys as a Markdown table, for
// docs/vm-onboarding.md (a test keeps the two in step).
func configReference() string {
	var b strings.Builder
	b.WriteString("| key | default | description |\n|---|---|---|\n")
	row := func(f config.Field) {
		def := f.Default
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s |\n", f.Path, def, strings.ReplaceAll(f.Doc, "|", `\|`))
	}
	for _, f := range config.Fields(Default(), "") {
		row(f)
		if f.Path == "workload.ports" {
			for _, pf := range config.Fields(PortConfig{}, "workload.ports[]") {
				row(pf)
			}
		}
	}
	return b.String()
}
