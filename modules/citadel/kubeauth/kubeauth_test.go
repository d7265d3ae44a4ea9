package kubeauth

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/testservers/kubetest"
	"github.com/meshd/meshd/modules/citadel"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestConfigValidate(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Audiences = nil
	if err := c.Validate(); err == nil {
		t.Fatal("no audiences accepted")
	}
	c.Audiences = []string{""}
	if err := c.Validate(); err == nil {
		t.Fatal("empty audience accepted")
	}
}

// TestTokenReview checks tokens from a real API server's TokenRequest.
func TestTokenReview(t *testing.T) {
	c := kubetest.Start(t)
	c.Namespace("shop")
	c.ServiceAccount("shop", "reviews")
	a := New(c.Client, []string{"istio-ca"}, "example.org")
	ctx := context.Background()

	caller, err := a.Authenticate(ctx, &citadel.AuthInput{Bearer: c.Token("shop", "reviews", "istio-ca")})
	if err != nil {
		t.Fatal(err)
	}
	if caller.Identity != "spiffe://example.org/ns/shop/sa/reviews" || caller.Authenticator != "kubernetes-token" ||
		!strings.HasPrefix(caller.Credential, "serviceaccount shop/reviews") {
		t.Fatalf("caller = %+v", caller)
	}

	for _, tc := range []struct {
		name, token string
		want        string
	}{
		{"wrong audience", c.Token("shop", "reviews", "vault"), "token review"},
		{"forged", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "token review"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(ctx, &citadel.AuthInput{Bearer: tc.token})
			if err == nil || errors.Is(err, citadel.ErrNoCredential) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a refusal", err)
			}
		})
	}

	// Not a JWT (a join token, no token at all): someone else's credential.
	for _, bearer := range []string{"", "0123456789abcdef.secret"} {
		if _, err := a.Authenticate(ctx, &citadel.AuthInput{Bearer: bearer}); !errors.Is(err, citadel.ErrNoCredential) {
			t.Errorf("bearer %q: err = %v, want ErrNoCredential", bearer, err)
		}
	}

	// A token outlives nothing: once its service account is deleted the
	// API server no longer vouches for it.
	stale := c.Token("shop", "reviews", "istio-ca")
	if err := c.Client.CoreV1().ServiceAccounts("shop").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(ctx, &citadel.AuthInput{Bearer: stale}); err == nil {
		t.Fatal("token of a deleted service account accepted")
	}
}
