// Package kube builds Kubernetes API clients for the modules that talk to a
// cluster (pilot's discovery source, galley's CRD source, citadel's
// TokenReview authenticator), so they all find the cluster the same way:
// an explicit kubeconfig, else $KUBECONFIG or ~/.kube/config, else the
// in-cluster service account.
package kube

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client is the connection part of a module's kubernetes config section.
// Modules embed its fields in their own sections so each can point at a
// different cluster, though usually all leave them empty.
type Client struct {
	// Kubeconfig is a kubeconfig file; empty means $KUBECONFIG,
	// ~/.kube/config, then the in-cluster service account.
	Kubeconfig string
	// Context selects a kubeconfig context; empty means the current one.
	Context string
	// QPS and Burst limit requests to the API server (client-go's rate
	// limiter); 0 keeps client-go's defaults.
	QPS   float32
	Burst int
}

// RESTConfig resolves the client config. userAgent names the caller
// (meshd/pilot, meshd/galley, ...) in the API server's audit log.
func (c Client) RESTConfig(userAgent string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.Kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: c.Context}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	if c.QPS > 0 {
		cfg.QPS = c.QPS
	}
	if c.Burst > 0 {
		cfg.Burst = c.Burst
	}
	cfg.UserAgent = userAgent
	return cfg, nil
}

// Where describes the cluster a config points at, for logs.
func Where(cfg *rest.Config) slog.Attr {
	return slog.String("apiserver", cfg.Host)
}
