package consul

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Config configures the Consul discovery source.
type Config struct {
	// Address is the Consul HTTP API: host:port, or a URL with a scheme.
	Address string `mapstructure:"address" doc:"Consul HTTP API address (host:port or http(s)://host:port); a local agent is best"`
	// Datacenter to read; empty means the agent's own.
	Datacenter string `mapstructure:"datacenter" doc:"Consul datacenter to discover; empty: the agent's own"`
	// Token is the ACL token (needs service:read and node:read).
	Token string `mapstructure:"token" secret:"true" doc:"Consul ACL token with service:read and node:read; empty: the agent's default token"`
	// TokenFile holds the ACL token; it wins over Token.
	TokenFile string `mapstructure:"tokenFile" doc:"file holding the Consul ACL token (read at start); wins over token"`
	TLS       TLS    `mapstructure:"tls"`
	// Namespace is the meshd namespace Consul services belong to, which
	// decides their visibility, DestinationRules and identity namespace.
	Namespace string `mapstructure:"namespace" doc:"meshd namespace of Consul services (unless a service's meshd-namespace meta says otherwise)"`
	// Domain makes host names: <service>.service.<domain>.
	Domain string `mapstructure:"domain" doc:"host names are <service>.service.<domain>, as in Consul DNS (unless a service's meshd-hostname meta says otherwise)"`
	// Services, when set, limits discovery to these service names.
	Services []string `mapstructure:"services" doc:"only discover these Consul services; empty: all but excludeServices"`
	// ExcludeServices are never discovered.
	ExcludeServices []string `mapstructure:"excludeServices" doc:"Consul services never discovered"`
	// WaitTime is how long one blocking query may wait for a change.
	WaitTime time.Duration `mapstructure:"waitTime" doc:"longest wait of one blocking query (Consul caps it at 10m); an idle Consul costs one request per watch per waitTime"`
	// MinInterval rate-limits each watch: at most one query per interval.
	MinInterval time.Duration `mapstructure:"minInterval" doc:"least time between two queries of one watch, so a busy catalog cannot make meshd spin"`
	// MaxBackoff caps the retry delay after errors.
	MaxBackoff time.Duration `mapstructure:"maxBackoff" doc:"longest delay between retries after Consul errors (exponential with jitter from 250ms)"`
	// AllowStale lets any Consul server answer, not only the leader.
	AllowStale bool `mapstructure:"allowStale" doc:"let any Consul server answer (spreads load; answers may lag the leader by a few ms)"`
}

// TLS configures HTTPS to Consul.
type TLS struct {
	CAFile             string `mapstructure:"caFile" doc:"CA bundle that signs Consul's HTTPS certificate; empty: system roots"`
	CertFile           string `mapstructure:"certFile" doc:"client certificate for Consul's verify_incoming"`
	KeyFile            string `mapstructure:"keyFile" doc:"key of certFile"`
	ServerName         string `mapstructure:"serverName" doc:"name to verify Consul's certificate against; empty: the address host"`
	InsecureSkipVerify bool   `mapstructure:"insecureSkipVerify" doc:"do not verify Consul's certificate (testing only)"`
}

// Default returns the defaults: the local agent, namespace default,
// <service>.service.consul host names, 5-minute blocking queries.
func Default() Config {
	return Config{
		Address:         "127.0.0.1:8500",
		Namespace:       "default",
		Domain:          "consul",
		ExcludeServices: []string{"consul"},
		WaitTime:        5 * time.Minute,
		MinInterval:     200 * time.Millisecond,
		MaxBackoff:      30 * time.Second,
		AllowStale:      true,
	}
}

// Validate checks what decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.Address == "" {
		errs = append(errs, errors.New("address: must not be empty"))
	} else if strings.Contains(c.Address, "://") {
		if u, err := url.Parse(c.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("address: %q is not an http(s) URL or host:port", c.Address))
		}
	}
	if c.Namespace == "" {
		errs = append(errs, errors.New("namespace: must not be empty"))
	}
	if c.Domain == "" {
		errs = append(errs, errors.New("domain: must not be empty"))
	}
	if c.WaitTime < time.Second || c.WaitTime > 10*time.Minute {
		errs = append(errs, errors.New("waitTime: must be between 1s and 10m"))
	}
	if c.MinInterval < 0 || c.MinInterval > time.Minute {
		errs = append(errs, errors.New("minInterval: must be between 0 and 1m"))
	}
	if c.MaxBackoff < time.Second {
		errs = append(errs, errors.New("maxBackoff: must be at least 1s"))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls: certFile and keyFile go together"))
	}
	return errors.Join(errs...)
}

// token returns the ACL token, from TokenFile when set.
func (c *Config) token() (string, error) {
	if c.TokenFile == "" {
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("tokenFile: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
