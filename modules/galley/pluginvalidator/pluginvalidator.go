// Package pluginvalidator runs config validators out of process: the gRPC
// shims of the validator plugin kind (core/plugin/proto/validator/v1) on
// both sides of the plugin boundary, and the module galley-plugins
// that adds each validator plugin declared in meshd.yaml to galley.
//
// The host sends every object of a candidate config set, its spec as the
// istio.io/api message in a protobuf Any, and gets findings back. It does
// not trust them: a finding must have a code, a known severity and, when it
// names an object, one of the objects sent; galley fills its file and line
// from the object and the field. While the plugin is down Validate returns
// an error wrapping plugin.ErrDown, and galley keeps the last accepted
// config (see api.Validator).
package pluginvalidator

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	// The spec types a plugin unpacks from the Any.
	_ "istio.io/api/networking/v1alpha3"
	_ "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/core/plugin"
	validatorv1 "github.com/meshd/meshd/core/plugin/proto/validator/v1"
	"github.com/meshd/meshd/modules/galley/api"
)

// Kind is the plugin kind this package serves.
const Kind = plugin.KindValidator

// Limits on one response, so a broken plugin cannot flood galley.
const (
	maxFindings = 10_000
	maxCode     = 64
	maxMessage  = 4096
	maxField    = 1024
)

// New returns an api.Validator backed by a plugin instance. It does not
// wait for a plugin that is down: Validate fails at once with an error
// wrapping plugin.ErrDown.
func New(in *plugin.Instance) api.Validator {
	return &instanceValidator{in: in}
}

type instanceValidator struct{ in *plugin.Instance }

func (v *instanceValidator) Validate(ctx context.Context, objs []*api.Object) ([]api.Finding, error) {
	conn, err := v.in.Current()
	if err != nil {
		return nil, err
	}
	if p := conn.Protocol(); p != 1 {
		return nil, plugin.Error(v.in.Name(), fmt.Errorf("%w: no validator client for protocol %d", plugin.ErrIncompatible, p))
	}
	f, err := validate(ctx, conn.ClientConn(), objs)
	return f, plugin.Error(v.in.Name(), err)
}

// NewClient returns an api.Validator calling the validator service over cc:
// the host side of the shim pair without the plugins module.
func NewClient(cc grpc.ClientConnInterface) api.Validator {
	return api.ValidatorFunc(func(ctx context.Context, objs []*api.Object) ([]api.Finding, error) {
		return validate(ctx, cc, objs)
	})
}

func validate(ctx context.Context, cc grpc.ClientConnInterface, objs []*api.Object) (_ []api.Finding, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("validator client: panic: %v", r)
		}
	}()
	req := &validatorv1.ValidateRequest{Objects: make([]*validatorv1.Object, 0, len(objs))}
	byKey := make(map[api.Key]*api.Object, len(objs))
	for _, o := range objs {
		po, err := objectToProto(o)
		if err != nil {
			return nil, err
		}
		req.Objects = append(req.Objects, po)
		byKey[o.Key()] = o
	}
	resp, err := validatorv1.NewValidatorClient(cc).Validate(ctx, req)
	if err != nil {
		if s, ok := status.FromError(err); ok {
			return nil, fmt.Errorf("validate: %s: %s", s.Code(), s.Message())
		}
		return nil, fmt.Errorf("validate: %w", err)
	}
	if n := len(resp.GetFindings()); n > maxFindings {
		return nil, fmt.Errorf("validate: %d findings, more than %d", n, maxFindings)
	}
	out := make([]api.Finding, 0, len(resp.GetFindings()))
	for i, pf := range resp.GetFindings() {
		f, err := findingFromProto(pf, byKey)
		if err != nil {
			return nil, fmt.Errorf("validate: finding %d: %w", i, err)
		}
		out = append(out, f)
	}
	return out, nil
}

func objectToProto(o *api.Object) (*validatorv1.Object, error) {
	po := &validatorv1.Object{
		Group: o.Kind.Group, Kind: o.Kind.Kind, ApiVersion: o.APIVersion,
		Namespace: o.Namespace, Name: o.Name,
		Labels: o.Labels, Annotations: o.Annotations,
		File: o.Source.File, Line: int32(o.Source.Line),
	}
	if o.Spec != nil {
		spec, err := anypb.New(o.Spec)
		if err != nil {
			return nil, fmt.Errorf("object %s: spec: %w", o.Key(), err)
		}
		po.Spec = spec
	}
	return po, nil
}

func objectFromProto(po *validatorv1.Object) (*api.Object, error) {
	o := &api.Object{
		Kind:       api.Kind{Group: po.GetGroup(), Kind: po.GetKind()},
		APIVersion: po.GetApiVersion(),
		Namespace:  po.GetNamespace(),
		Name:       po.GetName(),
		Source:     api.Source{File: po.GetFile(), Line: int(po.GetLine())},
	}
	if len(po.GetLabels()) > 0 {
		o.Labels = maps.Clone(po.GetLabels())
	}
	if len(po.GetAnnotations()) > 0 {
		o.Annotations = maps.Clone(po.GetAnnotations())
	}
	if po.GetSpec() != nil {
		spec, err := po.GetSpec().UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("object %s: spec %s: %w", o.Key(), po.GetSpec().GetTypeUrl(), err)
		}
		o.Spec = spec
	}
	return o, nil
}

var severityToProto = map[api.Severity]validatorv1.Severity{
	api.SeverityError:   validatorv1.Severity_SEVERITY_ERROR,
	api.SeverityWarning: validatorv1.Severity_SEVERITY_WARNING,
	api.SeverityInfo:    validatorv1.Severity_SEVERITY_INFO,
}

func findingToProto(f api.Finding) *validatorv1.Finding {
	return &validatorv1.Finding{Code: string(f.Code), Severity: severityToProto[f.Severity], Object: string(f.Object), Field: f.Field, Message: f.Message}
}

// findingFromProto checks a plugin's finding and completes it from the
// object it names: file, and the line of the field.
func findingFromProto(pf *validatorv1.Finding, byKey map[api.Key]*api.Object) (api.Finding, error) {
	f := api.Finding{Code: api.Code(pf.GetCode()), Object: api.Key(pf.GetObject()), Field: pf.GetField(), Message: pf.GetMessage()}
	switch pf.GetSeverity() {
	case validatorv1.Severity_SEVERITY_ERROR:
		f.Severity = api.SeverityError
	case validatorv1.Severity_SEVERITY_WARNING:
		f.Severity = api.SeverityWarning
	case validatorv1.Severity_SEVERITY_INFO:
		f.Severity = api.SeverityInfo
	default:
		return f, fmt.Errorf("unknown severity %d", pf.GetSeverity())
	}
	switch {
	case f.Code == "" || len(f.Code) > maxCode:
		return f, fmt.Errorf("code %.80q must be 1-%d characters", f.Code, maxCode)
	case f.Message == "":
		return f, errors.New("empty message")
	case len(f.Field) > maxField:
		return f, fmt.Errorf("field longer than %d bytes", maxField)
	}
	if len(f.Message) > maxMessage {
		f.Message = f.Message[:maxMessage] + "..."
	}
	if f.Object != "" {
		o, ok := byKey[f.Object]
		if !ok {
			return f, fmt.Errorf("names object %.120q, which was not sent", f.Object)
		}
		f.File = o.Source.File
		f.Line = o.Line(f.Field)
	}
	return f, nil
}

// Register serves v as the validator service on s: the plugin side of the
// shim pair.
func Register(s *grpc.Server, v api.Validator) error {
	validatorv1.RegisterValidatorServer(s, &server{v: v})
	return nil
}

// Plugin returns the go-plugin plugin for the validator kind: v served on
// the plugin side, an api.Validator on the host side.
func Plugin(v api.Validator) *plugin.GRPCPlugin {
	return &plugin.GRPCPlugin{
		Register: func(s *grpc.Server) error { return Register(s, v) },
		Connect: func(_ context.Context, cc *grpc.ClientConn) (any, error) {
			return NewClient(cc), nil
		},
	}
}

type server struct {
	validatorv1.UnimplementedValidatorServer
	v api.Validator
}

func (s *server) Validate(ctx context.Context, req *validatorv1.ValidateRequest) (*validatorv1.ValidateResponse, error) {
	objs := make([]*api.Object, 0, len(req.GetObjects()))
	for _, po := range req.GetObjects() {
		o, err := objectFromProto(po)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		objs = append(objs, o)
	}
	findings, err := s.v.Validate(ctx, objs)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, status.FromContextError(err).Err()
		}
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	resp := &validatorv1.ValidateResponse{Findings: make([]*validatorv1.Finding, 0, len(findings))}
	for _, f := range findings {
		resp.Findings = append(resp.Findings, findingToProto(f))
	}
	return resp, nil
}
