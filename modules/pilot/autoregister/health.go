package autoregister

import (
	"context"
	"time"

	"github.com/meshd/meshd/modules/pilot/autoregister/healthpb"
	xdsapi "github.com/meshd/meshd/xds/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// maxHealthMessage bounds what is kept of a report's message.
const maxHealthMessage = 256

// healthServer implements healthpb.WorkloadHealthServer.
type healthServer struct {
	healthpb.UnimplementedWorkloadHealthServer
	m *Module
}

// Report records the caller's probe result for one of its workloads. The
// caller is whoever its verified certificate says; a report for a
// workload another identity speaks for is refused.
func (h *healthServer) Report(ctx context.Context, req *healthpb.HealthReport) (*healthpb.HealthReportResponse, error) {
	id := peerIdentity(ctx)
	if id == "" {
		return nil, status.Error(codes.Unauthenticated, "a client certificate from meshd's CA is required")
	}
	_, ns, sa, err := xdsapi.ParseSPIFFEID(id)
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, "the client certificate's identity is not a workload identity")
	}
	name := req.GetWorkloadName()
	if name == "" || len(name) > 253 {
		return nil, status.Error(codes.InvalidArgument, "workload_name must be 1 to 253 bytes")
	}
	msg := req.GetMessage()
	if len(msg) > maxHealthMessage {
		msg = msg[:maxHealthMessage]
	}
	return h.m.report(wkey{ns, name}, sa, req.GetHealthy(), msg)
}

// peerIdentity is the SPIFFE ID of the caller's verified certificate.
func peerIdentity(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return ""
	}
	for _, u := range ti.State.VerifiedChains[0][0].URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

func (m *Module) report(k wkey, sa string, healthy bool, msg string) (*healthpb.HealthReportResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[k]
	if e == nil {
		if m.pendingLocked() >= m.cfg.MaxPending {
			return &healthpb.HealthReportResponse{Reason: "meshd has not seen this workload's xDS stream, and keeps no more reports for unknown workloads"}, nil
		}
		e = m.entryLocked(k, true)
		e.removeAt = m.now().Add(max(m.cfg.GracePeriod, time.Minute))
		m.wake()
	}
	owner := ""
	if cur, _ := e.current(); cur != nil {
		owner = cur.proxy.ServiceAccount
	} else if e.registered != nil {
		owner = e.registered.ServiceAccount
	}
	if owner != "" && owner != sa {
		return nil, status.Errorf(codes.PermissionDenied, "workload %s is registered by another identity", k)
	}
	changed := e.health == nil || e.health.healthy != healthy || e.health.sa != sa
	e.health = &health{healthy: healthy, message: msg, at: m.now(), sa: sa}
	if changed && len(e.conns) > 0 {
		m.evaluateLocked(e)
	}
	resp := &healthpb.HealthReportResponse{Registered: e.registered != nil}
	switch {
	case len(e.conns) == 0 && e.registered == nil:
		resp.Reason = "meshd has not seen this workload's xDS stream (with " + MetaGroup + " set) on the TLS port"
	case e.refused != "":
		resp.Reason, resp.Refused = e.refused, len(e.conns) > 0
	}
	return resp, nil
}

// pendingLocked counts entries no stream speaks for and nothing is
// registered for: reports waiting for their stream, refusals in their
// grace period.
func (m *Module) pendingLocked() int {
	n := 0
	for _, e := range m.entries {
		if len(e.conns) == 0 && e.registered == nil {
			n++
		}
	}
	return n
}
