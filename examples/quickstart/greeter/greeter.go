// Package greeter is the quickstart's gRPC service, written by hand so the
// example needs no code generation: one unary method,
// quickstart.Greeter/SayHello, taking and returning a
// google.protobuf.StringValue.
package greeter

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Method is the full method name clients call.
const Method = "/quickstart.Greeter/SayHello"

// Server is what a greeter backend implements.
type Server interface {
	SayHello(ctx context.Context, name *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

// Register adds the greeter service to a gRPC server.
func Register(s grpc.ServiceRegistrar, impl Server) {
	s.RegisterService(&serviceDesc, impl)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "quickstart.Greeter",
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "SayHello",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			if icpt == nil {
				return srv.(Server).SayHello(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: Method}
			return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(Server).SayHello(ctx, req.(*wrapperspb.StringValue))
			})
		},
	}},
	Metadata: "greeter.go",
}

// SayHello calls the greeter on cc and returns its answer.
func SayHello(ctx context.Context, cc grpc.ClientConnInterface, name string, opts ...grpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	if err := cc.Invoke(ctx, Method, wrapperspb.String(name), out, opts...); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}
