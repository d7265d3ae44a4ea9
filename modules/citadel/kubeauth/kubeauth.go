// Package kubeauth is citadel's authenticator for Kubernetes service-account
// tokens. A workload sends its projected service-account token as the
// bearer token of the CSR request (Istio's agent does exactly this); the
// authenticator asks the API server whether the token is valid for one of
// the configured audiences (TokenReview) and, when it is, the caller is
// spiffe://<trust-domain>/ns/<namespace>/sa/<service account> of the
// token. Citadel then signs only a CSR for that identity, so a token of one
// service account never buys a certificate for another.
//
// Tokens are never logged or stored; the ledger records the service
// account and, for bound tokens, the pod name.
package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/internal/kube"
	"github.com/meshd/meshd/modules/citadel"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func init() { core.Register(new(Module)) }

// ModuleID is the module that adds the authenticator to citadel.
const ModuleID core.ModuleID = "citadel-kubernetes"

// Config is the modules.citadel-kubernetes section.
type Config struct {
	Kubeconfig string  `mapstructure:"kubeconfig" doc:"kubeconfig file; empty: $KUBECONFIG, ~/.kube/config, then the in-cluster service account"`
	Context    string  `mapstructure:"context" doc:"kubeconfig context; empty: the current one"`
	QPS        float32 `mapstructure:"qps" doc:"API requests per second (client-go rate limit; 0: client-go default); one TokenReview per CSR"`
	Burst      int     `mapstructure:"burst" doc:"API request burst (0: client-go default)"`
	// Audiences the token must be valid for (any one of them).
	Audiences []string `mapstructure:"audiences" doc:"token audiences accepted (the token must carry one); Istio's agent requests istio-ca"`
}

// Default returns the defaults: Istio's CA audience.
func Default() Config {
	return Config{Audiences: []string{"istio-ca"}}
}

// Validate checks what decoding cannot.
func (c *Config) Validate() error {
	if len(c.Audiences) == 0 || slices.Contains(c.Audiences, "") {
		return errors.New("audiences: need at least one non-empty audience (an unchecked audience would accept tokens minted for any other service)")
	}
	return nil
}

// Authenticator checks service-account tokens with TokenReview.
type Authenticator struct {
	client      kubernetes.Interface
	audiences   []string
	trustDomain string
}

var _ citadel.Authenticator = (*Authenticator)(nil)

// New returns an authenticator reviewing tokens through client.
func New(client kubernetes.Interface, audiences []string, trustDomain string) *Authenticator {
	return &Authenticator{client: client, audiences: slices.Clone(audiences), trustDomain: trustDomain}
}

// Name implements citadel.Authenticator.
func (a *Authenticator) Name() string { return "kubernetes-token" }

// saPrefix starts the user name of a service account.
const saPrefix = "system:serviceaccount:"

// Authenticate implements citadel.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context, in *citadel.AuthInput) (*citadel.Caller, error) {
	if in.Bearer == "" || strings.Count(in.Bearer, ".") != 2 {
		return nil, citadel.ErrNoCredential // not a JWT
	}
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: in.Bearer, Audiences: a.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "token not authenticated"
		}
		return nil, fmt.Errorf("token review: %s", msg)
	}
	// The API server checked the audience already; insist on it anyway, so
	// a server that ignores spec.audiences cannot widen what is accepted.
	if !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) }) {
		return nil, fmt.Errorf("token audiences %v include none of %v", st.Audiences, a.audiences)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, saPrefix), ":")
	if !strings.HasPrefix(st.User.Username, saPrefix) || !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return nil, fmt.Errorf("token of %q is not a service account's", st.User.Username)
	}
	cred := "serviceaccount " + ns + "/" + sa
	if pod := st.User.Extra["authentication.kubernetes.io/pod-name"]; len(pod) == 1 {
		cred += " pod " + pod[0]
	}
	return &citadel.Caller{
		Identity:      "spiffe://" + a.trustDomain + "/ns/" + ns + "/sa/" + sa,
		Authenticator: a.Name(),
		Credential:    cred,
	}, nil
}

// adder is citadel's hook for extra authenticators.
type adder interface {
	AddAuthenticator(citadel.Authenticator)
}

// Module adds the authenticator to citadel. It is off unless
// modules.citadel-kubernetes.enabled is true.
type Module struct{}

var _ core.Provisioner = (*Module)(nil)

// MeshModule implements core.Module.
func (*Module) MeshModule() core.ModuleInfo {
	return core.ModuleInfo{
		ID:                ModuleID,
		New:               func() core.Module { return new(Module) },
		Requires:          []core.ModuleID{"citadel"},
		Config:            func() any { c := Default(); return &c },
		DisabledByDefault: true,
		Description:       "citadel authenticator for Kubernetes service-account tokens (TokenReview with the audience checked)",
	}
}

// Provision builds the authenticator and hands it to citadel.
func (m *Module) Provision(ctx *core.Context) error {
	cfg, err := core.ConfigAs[Config](ctx)
	if err != nil {
		return err
	}
	rc, err := kube.Client{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context, QPS: cfg.QPS, Burst: cfg.Burst}.RESTConfig("meshd/citadel")
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	add, err := core.Dep[adder](ctx, "citadel")
	if err != nil {
		return err
	}
	add.AddAuthenticator(New(client, cfg.Audiences, ctx.Mesh().TrustDomain))
	return nil
}
