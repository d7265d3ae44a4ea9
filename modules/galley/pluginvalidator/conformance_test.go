package pluginvalidator_test

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin/plugintest"
	validatorv1 "github.com/meshd/meshd/core/plugin/proto/validator/v1"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/pluginvalidator"
	"github.com/meshd/meshd/modules/galley/pluginvalidator/validatortest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformanceInProcess(t *testing.T) {
	validatortest.Run(t, func(_ *testing.T, v api.Validator) api.Validator { return v })
}

func TestConformanceShims(t *testing.T) {
	validatortest.Run(t, func(t *testing.T, v api.Validator) api.Validator {
		return plugintest.Dispense(t, pluginvalidator.Kind, pluginvalidator.Plugin(v)).(api.Validator)
	})
}

// fixed answers every Validate with the same response.
type fixed struct {
	validatorv1.UnimplementedValidatorServer
	resp *validatorv1.ValidateResponse
}

func (f *fixed) Validate(context.Context, *validatorv1.ValidateRequest) (*validatorv1.ValidateResponse, error) {
	return f.resp, nil
}

// TestUntrustedFindings: what a plugin returns is checked before galley
// sees it.
func TestUntrustedFindings(t *testing.T) {
	objs := validatortest.Corpus(t)
	key := string(objs[0].Key())
	for _, tc := range []struct {
		name string
		f    []*validatorv1.Finding
		want string
	}{
		{"unknown object", []*validatorv1.Finding{{Code: "X1", Severity: validatorv1.Severity_SEVERITY_ERROR, Object: "VirtualService/nope/nope", Message: "m"}}, "which was not sent"},
		{"no severity", []*validatorv1.Finding{{Code: "X1", Object: key, Message: "m"}}, "unknown severity"},
		{"no code", []*validatorv1.Finding{{Severity: validatorv1.Severity_SEVERITY_ERROR, Message: "m"}}, "code"},
		{"long code", []*validatorv1.Finding{{Code: strings.Repeat("C", 65), Severity: validatorv1.Severity_SEVERITY_ERROR, Message: "m"}}, "code"},
		{"no message", []*validatorv1.Finding{{Code: "X1", Severity: validatorv1.Severity_SEVERITY_ERROR}}, "empty message"},
		{"too many", func() []*validatorv1.Finding {
			out := make([]*validatorv1.Finding, 10_001)
			for i := range out {
				out[i] = &validatorv1.Finding{Code: "X", Severity: validatorv1.Severity_SEVERITY_INFO, Message: "m"}
			}
			return out
		}(), "more than 10000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := plugintest.Connect(t, pluginvalidator.Kind, func(s *grpc.Server) error {
				validatorv1.RegisterValidatorServer(s, &fixed{resp: &validatorv1.ValidateResponse{Findings: tc.f}})
				return nil
			})
			got, err := pluginvalidator.NewClient(cc).Validate(context.Background(), objs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("findings %v, err %v; want error with %q", got, err, tc.want)
			}
		})
	}
	t.Run("long message cut", func(t *testing.T) {
		cc := plugintest.Connect(t, pluginvalidator.Kind, func(s *grpc.Server) error {
			validatorv1.RegisterValidatorServer(s, &fixed{resp: &validatorv1.ValidateResponse{Findings: []*validatorv1.Finding{
				{Code: "X1", Severity: validatorv1.Severity_SEVERITY_WARNING, Object: key, Field: "spec.hosts[0]", Message: strings.Repeat("m", 10000)},
			}}})
			return nil
		})
		got, err := pluginvalidator.NewClient(cc).Validate(context.Background(), objs)
		if err != nil || len(got) != 1 || len(got[0].Message) > 4100 || got[0].Line == 0 || got[0].File != objs[0].Source.File {
			t.Fatalf("%v %v", got, err)
		}
	})
}
