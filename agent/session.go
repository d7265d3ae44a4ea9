package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/modules/pilot/autoregister/healthpb"
	"github.com/meshd/meshd/modules/pilot/generate"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// errNoCert: the session waits for the renewal loop to get a valid
// certificate.
var errNoCert = errors.New("no valid certificate to connect with")

// runSession keeps the agent's own xDS stream to meshd open, reconnecting
// with backoff, until ctx ends. The stream is the workload's registration
// (its node names the WorkloadGroup) and brings the trust bundle (the SDS
// secret ROOTCA, whose acknowledgement tells citadel's rotation this node
// has the new roots); the health reports share its connection.
func (a *Agent) runSession(ctx context.Context) {
	b := a.backoff()
	for {
		start := a.now()
		err := a.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if a.now().Sub(start) > time.Minute {
			b.reset() // it was up for a while: this is a new outage
		}
		d := b.next()
		switch {
		case errors.Is(err, errNoCert):
			a.log.Debug("xDS session waits for a valid certificate", "retryIn", d)
		case errors.Is(err, ErrUntrustedServer):
			a.log.Error("cannot trust meshd; retrying, but this needs an operator", "error", err, "retryIn", d.Round(time.Millisecond))
		case certRejected(err):
			a.log.Error("meshd refuses this agent's certificate (its root is no longer trusted?); getting a new one", "error", err)
			a.kickRenew()
		default:
			a.log.Warn("xDS session to meshd ended; reconnecting", "address", a.cfg.ControlPlane.Address, "error", err, "retryIn", d.Round(time.Millisecond))
		}
		a.setConnected(false)
		if !sleep(ctx, d, nil) {
			return
		}
	}
}

// session runs one connection: the ADS stream and the health reporter.
func (a *Agent) session(ctx context.Context) error {
	if a.clientCert() == nil {
		return errNoCert
	}
	conn, err := grpc.NewClient(a.cfg.ControlPlane.Address,
		grpc.WithTransportCredentials(transport(a.verifier, a.clientCert)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return dialErr(a.verifier, a.cfg.ControlPlane.Address, err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: a.agentNode(), TypeUrl: xdsapi.SecretType, ResourceNames: []string{generate.SecretRootCA}}
	if err := stream.Send(req); err != nil {
		return dialErr(a.verifier, a.cfg.ControlPlane.Address, err)
	}
	done := make(chan struct{})
	defer func() { cancel(nil); <-done }()
	go func() {
		defer close(done)
		if a.cfg.Workload.WorkloadGroup != "" {
			a.reportHealth(ctx, cancel, healthpb.NewWorkloadHealthClient(conn))
		}
	}()
	first, accepted := true, ""
	for {
		resp, err := stream.Recv()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return cause
			}
			return dialErr(a.verifier, a.cfg.ControlPlane.Address, err)
		}
		if first {
			a.setConnected(true)
			a.log.Info("connected to meshd", "address", a.cfg.ControlPlane.Address, "node", req.Node.GetId())
			first = false
		}
		ack := &discoveryv3.DiscoveryRequest{TypeUrl: xdsapi.SecretType, ResourceNames: req.ResourceNames,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if bundle := rootCAFrom(resp); bundle != nil {
			if err := a.updateBundle(bundle); err != nil {
				a.log.Warn("trust bundle from meshd rejected", "error", err)
				ack.VersionInfo = accepted // a NACK: keep the last good version
				ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			}
		}
		accepted = ack.VersionInfo
		if err := stream.Send(ack); err != nil {
			return dialErr(a.verifier, a.cfg.ControlPlane.Address, err)
		}
	}
}

// reportHealth tells meshd the probe's verdict when it changes and every
// reportInterval. When meshd says it has no registration for a stream it
// should have seen, twice in a row, the stream is restarted so meshd sees
// it again (meshd may have missed it, or restarted).
func (a *Agent) reportHealth(ctx context.Context, restart context.CancelCauseFunc, client healthpb.WorkloadHealthClient) {
	cfg := a.cfg.Workload.Probe
	t := time.NewTicker(cfg.ReportInterval)
	defer t.Stop()
	missing, lastReason := 0, ""
	// Give meshd a moment to see the stream before the first report.
	if !sleep(ctx, min(time.Second, cfg.ReportInterval), nil) {
		return
	}
	for {
		st := a.probe.get()
		if st.known {
			rctx, cancel := context.WithTimeout(ctx, a.cfg.ControlPlane.DialTimeout)
			resp, err := client.Report(rctx, &healthpb.HealthReport{WorkloadName: a.cfg.Workload.Name, Healthy: st.healthy, Message: st.message})
			cancel()
			switch {
			case ctx.Err() != nil:
				return
			case status.Code(err) == codes.Unimplemented:
				a.log.Error("meshd does not take registrations (its autoregister module is off); workload.workloadGroup has no effect", "error", err)
				return
			case err != nil:
				a.log.Warn("health report failed", "error", err)
			case resp.GetRegistered():
				missing = 0
				if lastReason != "" {
					a.log.Info("workload registered with meshd", "workloadGroup", a.cfg.Workload.WorkloadGroup)
				}
				lastReason = ""
			case resp.GetRefused():
				if resp.GetReason() != lastReason {
					a.log.Error("meshd refuses to register this workload", "workloadGroup", a.cfg.Workload.WorkloadGroup, "reason", resp.GetReason())
				}
				lastReason = resp.GetReason()
			default:
				missing++
				lastReason = resp.GetReason()
				if missing >= 2 {
					restart(fmt.Errorf("meshd has no registration for this workload (%s); reconnecting", resp.GetReason()))
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.probe.changed:
		}
	}
}
