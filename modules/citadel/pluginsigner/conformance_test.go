package pluginsigner_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/core/plugin/plugintest"
	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/pluginsigner"
	"github.com/meshd/meshd/modules/citadel/pluginsigner/signertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformanceInProcess(t *testing.T) {
	signertest.Run(t, func(_ *testing.T, s api.Signer) api.Signer { return s })
}

func TestConformanceShims(t *testing.T) {
	signertest.Run(t, func(t *testing.T, s api.Signer) api.Signer {
		return plugintest.Dispense(t, pluginsigner.Kind, pluginsigner.Plugin(s)).(api.Signer)
	})
}

// TestLyingSigner: a plugin's certificate is checked before citadel uses it.
func TestLyingSigner(t *testing.T) {
	const id = "spiffe://cluster.local/ns/shop/sa/reviews"
	a := signertest.Authority(t)
	other := signertest.Authority(t)
	honest := pluginsigner.Local(a)
	for _, tc := range []struct {
		name string
		lie  func(ctx context.Context, req api.SignRequest) ([][]byte, error)
		want string
	}{
		{"another key", func(ctx context.Context, req api.SignRequest) ([][]byte, error) {
			req.CSR = signertest.CSR(t)
			return honest.Sign(ctx, req)
		}, "public key is not the CSR's"},
		{"another identity", func(ctx context.Context, req api.SignRequest) ([][]byte, error) {
			req.URIs = []string{"spiffe://cluster.local/ns/kube-system/sa/admin"}
			return honest.Sign(ctx, req)
		}, "URIs"},
		{"extra DNS name", func(ctx context.Context, req api.SignRequest) ([][]byte, error) {
			req.DNSNames = []string{"admin.example.com"}
			return honest.Sign(ctx, req)
		}, "DNS names"},
		{"too long", func(ctx context.Context, req api.SignRequest) ([][]byte, error) {
			req.TTL = 10 * time.Hour
			return honest.Sign(ctx, req)
		}, "later than the requested"},
		{"broken chain", func(ctx context.Context, req api.SignRequest) ([][]byte, error) {
			chain, err := honest.Sign(ctx, req)
			if err != nil {
				return nil, err
			}
			return [][]byte{chain[0], other.Root().Raw}, nil
		}, "is not signed by certificate 1"},
		{"garbage", func(context.Context, api.SignRequest) ([][]byte, error) {
			return [][]byte{[]byte("not a certificate")}, nil
		}, "certificate 0"},
		{"empty", func(context.Context, api.SignRequest) ([][]byte, error) { return nil, nil }, "empty chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := plugintest.Dispense(t, pluginsigner.Kind, pluginsigner.Plugin(signertest.SignerFunc(tc.lie))).(api.Signer)
			_, err := s.Sign(context.Background(), api.SignRequest{CSR: signertest.CSR(t), URIs: []string{id}, TTL: time.Hour})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "unusable") {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}
