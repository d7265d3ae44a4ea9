// Package pluginsink runs telemetry sinks out of process: the gRPC shims of
// the sink plugin kind (core/plugin/proto/sink/v1) on both sides of the
// plugin boundary, and the module telemetry-plugins that adds each sink
// plugin declared in meshd.yaml to telemetry.
//
// Telemetry hands each sink batches of access-log records without ever
// blocking on it (a full queue drops and counts). A sink plugin that is down
// fails its exports at once, with an error wrapping plugin.ErrDown, so its
// queue drains into the dropped counter instead of backing up; it catches up
// with new records once restarted.
package pluginsink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshd/meshd/core/plugin"
	sinkv1 "github.com/meshd/meshd/core/plugin/proto/sink/v1"
	"github.com/meshd/meshd/modules/telemetry/api"
)

// Kind is the plugin kind this package serves.
const Kind = plugin.KindSink

// batchRecords is the most records sent in one Export call; bigger batches
// are split, keeping messages well below the size limit.
const batchRecords = 1000

// New returns an api.Sink backed by a plugin instance.
func New(in *plugin.Instance) api.Sink { return &instanceSink{in: in} }

type instanceSink struct{ in *plugin.Instance }

func (s *instanceSink) Export(ctx context.Context, records []api.Record) error {
	conn, err := s.in.Current()
	if err != nil {
		return err
	}
	if p := conn.Protocol(); p != 1 {
		return plugin.Error(s.in.Name(), fmt.Errorf("%w: no sink client for protocol %d", plugin.ErrIncompatible, p))
	}
	return plugin.Error(s.in.Name(), export(ctx, conn.ClientConn(), records))
}

// NewClient returns an api.Sink calling the sink service over cc: the host
// side of the shim pair without the plugins module.
func NewClient(cc grpc.ClientConnInterface) api.Sink { return &connSink{cc: cc} }

type connSink struct{ cc grpc.ClientConnInterface }

func (s *connSink) Export(ctx context.Context, records []api.Record) error {
	return export(ctx, s.cc, records)
}

func export(ctx context.Context, cc grpc.ClientConnInterface, records []api.Record) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sink client: panic: %v", r)
		}
	}()
	c := sinkv1.NewSinkClient(cc)
	for len(records) > 0 {
		n := min(len(records), batchRecords)
		req := &sinkv1.ExportRequest{Records: make([]*sinkv1.Record, n)}
		block := make([]sinkv1.Record, n)
		for i := range n {
			recordToProto(&records[i], &block[i])
			req.Records[i] = &block[i]
		}
		if _, err := c.Export(ctx, req); err != nil {
			if s, ok := status.FromError(err); ok {
				return fmt.Errorf("export: %s: %s", s.Code(), s.Message())
			}
			return fmt.Errorf("export: %w", err)
		}
		records = records[n:]
	}
	return nil
}

func recordToProto(r *api.Record, p *sinkv1.Record) {
	*p = sinkv1.Record{
		Kind: r.Kind, Reporter: r.Reporter, Proxy: r.Proxy,
		SourceWorkload: r.SourceWorkload, SourceNamespace: r.SourceNamespace, SourcePrincipal: r.SourcePrincipal,
		DestinationService: r.DestinationService, DestinationWorkload: r.DestinationWorkload, DestinationNamespace: r.DestinationNamespace,
		ConnectionSecurityPolicy: r.ConnectionSecurityPolicy,
		Protocol:                 r.Protocol, Method: r.Method, Authority: r.Authority, Path: r.Path, UserAgent: r.UserAgent,
		RequestId: r.RequestID, ResponseCode: r.ResponseCode, GrpcStatus: r.GRPCStatus, ResponseFlags: r.ResponseFlags,
		DurationNanos: int64(r.Duration), BytesReceived: r.BytesReceived, BytesSent: r.BytesSent,
		UpstreamCluster: r.UpstreamCluster, UpstreamHost: r.UpstreamHost, DownstreamPeer: r.DownstreamPeer,
	}
	if !r.Start.IsZero() {
		p.Start = timestamppb.New(r.Start)
	}
}

func recordFromProto(p *sinkv1.Record) api.Record {
	r := api.Record{
		Kind: p.GetKind(), Reporter: p.GetReporter(), Proxy: p.GetProxy(),
		SourceWorkload: p.GetSourceWorkload(), SourceNamespace: p.GetSourceNamespace(), SourcePrincipal: p.GetSourcePrincipal(),
		DestinationService: p.GetDestinationService(), DestinationWorkload: p.GetDestinationWorkload(), DestinationNamespace: p.GetDestinationNamespace(),
		ConnectionSecurityPolicy: p.GetConnectionSecurityPolicy(),
		Protocol:                 p.GetProtocol(), Method: p.GetMethod(), Authority: p.GetAuthority(), Path: p.GetPath(), UserAgent: p.GetUserAgent(),
		RequestID: p.GetRequestId(), ResponseCode: p.GetResponseCode(), GRPCStatus: p.GetGrpcStatus(), ResponseFlags: p.GetResponseFlags(),
		Duration: time.Duration(p.GetDurationNanos()), BytesReceived: p.GetBytesReceived(), BytesSent: p.GetBytesSent(),
		UpstreamCluster: p.GetUpstreamCluster(), UpstreamHost: p.GetUpstreamHost(), DownstreamPeer: p.GetDownstreamPeer(),
	}
	if p.GetStart() != nil {
		r.Start = p.GetStart().AsTime()
	}
	return r
}

// Register serves s as the sink service on srv: the plugin side of the
// shim pair.
func Register(srv *grpc.Server, s api.Sink) error {
	sinkv1.RegisterSinkServer(srv, &server{s: s})
	return nil
}

// Plugin returns the go-plugin plugin for the sink kind: s served on the
// plugin side, an api.Sink on the host side.
func Plugin(s api.Sink) *plugin.GRPCPlugin {
	return &plugin.GRPCPlugin{
		Register: func(srv *grpc.Server) error { return Register(srv, s) },
		Connect: func(_ context.Context, cc *grpc.ClientConn) (any, error) {
			return NewClient(cc), nil
		},
	}
}

type server struct {
	sinkv1.UnimplementedSinkServer
	s api.Sink
}

func (s *server) Export(ctx context.Context, req *sinkv1.ExportRequest) (*sinkv1.ExportResponse, error) {
	records := make([]api.Record, len(req.GetRecords()))
	for i, p := range req.GetRecords() {
		records[i] = recordFromProto(p)
	}
	if err := s.s.Export(ctx, records); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, status.FromContextError(err).Err()
		}
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return &sinkv1.ExportResponse{}, nil
}
