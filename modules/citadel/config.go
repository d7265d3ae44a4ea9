package citadel

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/meshd/meshd/modules/citadel/ca"
)

// Config is the modules.citadel section of meshd.yaml.
type Config struct {
	// Root configures the self-signed root made on first start. It is
	// ignored when PluggedCADir is set.
	Root RootConfig `mapstructure:"root"`
	// PluggedCADir, when set, loads the CA from files in Istio's layout
	// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) instead of
	// keeping a self-signed root in the store.
	PluggedCADir string `mapstructure:"pluggedCADir" doc:"directory with ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem (Istio's cacerts layout); empty: self-signed root kept in the store"`
	// KeyEncryptionKeyFile, when set, encrypts CA keys in the store with
	// AES-256-GCM under the 32-byte key in this file.
	KeyEncryptionKeyFile string          `mapstructure:"keyEncryptionKeyFile" doc:"file with a 32-byte key (raw, hex or base64, mode 0600) that encrypts CA keys in the store (AES-256-GCM); empty: keys stored unencrypted in the 0600 store"`
	Leaf                 LeafConfig      `mapstructure:"leaf"`
	Serving              ServingConfig   `mapstructure:"serving"`
	TrustBundleFile      string          `mapstructure:"trustBundleFile" doc:"file the trust bundle (every trusted root, PEM) is written to for the node agent; empty: <dataDir>/citadel/root-cert.pem; \"-\": no file"`
	RateLimit            RateLimitConfig `mapstructure:"rateLimit"`
	Rotation             RotationConfig  `mapstructure:"rotation"`
	// Retention is how long issued-certificate records and used-up join
	// tokens are kept after they expire.
	Retention time.Duration `mapstructure:"retention" doc:"how long records of issued certificates and dead join tokens are kept after they expire"`
}

// RootConfig configures the self-signed root.
type RootConfig struct {
	Algorithm string        `mapstructure:"algorithm" doc:"key of a new self-signed root: ECDSA-P256, RSA-2048 or RSA-4096"`
	Lifetime  time.Duration `mapstructure:"lifetime" doc:"lifetime of a new self-signed root"`
}

// LeafConfig configures workload certificates.
type LeafConfig struct {
	DefaultTTL time.Duration `mapstructure:"defaultTTL" doc:"lifetime of a workload certificate when the request names none"`
	MaxTTL     time.Duration `mapstructure:"maxTTL" doc:"longest lifetime a request may ask for; longer requests are cut to it"`
}

// ServingConfig configures the certificate of the :15012 TLS listener.
type ServingConfig struct {
	DNSNames []string      `mapstructure:"dnsNames" doc:"DNS names (and IP addresses) in the serving certificate of :15012, which the CA issues to itself"`
	TTL      time.Duration `mapstructure:"ttl" doc:"lifetime of the serving certificate; it is renewed at half-life and when the signing root changes"`
}

// RateLimitConfig limits signing per caller: per identity and source
// address, so replicas sharing an identity are limited apart.
type RateLimitConfig struct {
	PerCallerQPS float64 `mapstructure:"perCallerQPS" doc:"signing requests per second allowed per caller (identity and source address); 0 disables the limit"`
	Burst        int     `mapstructure:"burst" doc:"requests a caller may make at once before perCallerQPS applies"`
}

// RotationConfig configures root rotation (self-signed roots only).
type RotationConfig struct {
	RenewBefore   time.Duration `mapstructure:"renewBefore" doc:"start a rotation automatically when the self-signed root expires within this; 0 disables automatic rotation"`
	AckTimeout    time.Duration `mapstructure:"ackTimeout" doc:"how long to wait for connected proxies to acknowledge a bundle with the new root before switching signing anyway"`
	StagedLeafTTL time.Duration `mapstructure:"stagedLeafTTL" doc:"during a rotation, certificates still signed by the old root live at most this long (jittered down to half), so their holders come back to the new root soon and spread out"`
	CheckInterval time.Duration `mapstructure:"checkInterval" doc:"how often the rotation state machine and certificate renewals are checked"`
}

// Default returns the defaults documented in docs/config-reference.md.
func Default() *Config {
	return &Config{
		Root: RootConfig{Algorithm: string(ca.ECDSAP256), Lifetime: 10 * 365 * 24 * time.Hour},
		Leaf: LeafConfig{DefaultTTL: 24 * time.Hour, MaxTTL: 90 * 24 * time.Hour},
		Serving: ServingConfig{
			DNSNames: []string{"meshd.meshd-system.svc", "istiod.istio-system.svc", "localhost", "127.0.0.1"},
			TTL:      24 * time.Hour,
		},
		RateLimit: RateLimitConfig{PerCallerQPS: 1, Burst: 10},
		Rotation: RotationConfig{
			RenewBefore:   2 * 365 * 24 * time.Hour,
			AckTimeout:    10 * time.Minute,
			StagedLeafTTL: time.Hour,
			CheckInterval: 10 * time.Second,
		},
		Retention: 7 * 24 * time.Hour,
	}
}

// Validate checks what decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.PluggedCADir == "" {
		if !slices.Contains(ca.KeyAlgorithms, ca.KeyAlgorithm(c.Root.Algorithm)) {
			errs = append(errs, fmt.Errorf("root.algorithm: %q is not one of %v", c.Root.Algorithm, ca.KeyAlgorithms))
		}
		if c.Root.Lifetime < time.Minute {
			errs = append(errs, errors.New("root.lifetime: must be at least 1m"))
		}
		if c.Rotation.RenewBefore < 0 || c.Rotation.RenewBefore >= c.Root.Lifetime {
			errs = append(errs, errors.New("rotation.renewBefore: must be at least 0 and shorter than root.lifetime"))
		}
	}
	if c.Leaf.DefaultTTL < time.Second || c.Leaf.MaxTTL < c.Leaf.DefaultTTL {
		errs = append(errs, errors.New("leaf: defaultTTL must be at least 1s and maxTTL at least defaultTTL"))
	}
	if len(c.Serving.DNSNames) == 0 {
		errs = append(errs, errors.New("serving.dnsNames: need at least one name"))
	}
	if c.Serving.TTL < time.Minute {
		errs = append(errs, errors.New("serving.ttl: must be at least 1m"))
	}
	if c.RateLimit.PerCallerQPS < 0 || (c.RateLimit.PerCallerQPS > 0 && c.RateLimit.Burst < 1) {
		errs = append(errs, errors.New("rateLimit: perCallerQPS must be at least 0 and burst at least 1"))
	}
	if c.Rotation.AckTimeout <= 0 || c.Rotation.StagedLeafTTL <= 0 || c.Rotation.CheckInterval <= 0 {
		errs = append(errs, errors.New("rotation: ackTimeout, stagedLeafTTL and checkInterval must be positive"))
	}
	if c.Retention < 0 {
		errs = append(errs, errors.New("retention: must not be negative"))
	}
	return errors.Join(errs...)
}

// servingNames splits Serving.DNSNames into DNS names and IP addresses.
func (c *Config) servingNames() (dns []string, ips []net.IP) {
	for _, n := range c.Serving.DNSNames {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return dns, ips
}
