package citadel

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/modules/citadel/ca"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// The errors callers see. They are deliberately opaque: the reason is in
// the server log and in meshd_citadel_csr_refused_total{reason}.
var (
	errUnauthenticated = status.Error(codes.Unauthenticated, "authentication failed")
	errRateLimited     = status.Error(codes.ResourceExhausted, "too many certificate requests; retry later")
	errRefused         = status.Error(codes.InvalidArgument, "certificate request refused")
	errInternal        = status.Error(codes.Internal, "certificate signing failed")
	errUnavailable     = status.Error(codes.Unavailable, "certificate signing unavailable; retry later")
)

// csrServer implements istio.v1.auth.IstioCertificateService.
type csrServer struct {
	pb.UnimplementedIstioCertificateServiceServer

	log     *slog.Logger
	metrics *metrics
	trust   *atomic.Pointer[trustSnapshot]
	auths   []Authenticator
	limiter *limiter
	ledger  *ledger
	leaf    LeafConfig
	now     func() time.Time
	// ext is the external signer, if one is set; trustRoot makes sure the
	// root of its chain is in the bundle.
	ext       *atomic.Pointer[extSigner]
	trustRoot func(*x509.Certificate) error
}

// register adds the service to a gRPC server.
func (s *csrServer) register(r grpc.ServiceRegistrar) {
	pb.RegisterIstioCertificateServiceServer(r, s)
}

// authInput extracts what authenticators look at from a request context.
func authInput(ctx context.Context) *AuthInput {
	in := &AuthInput{}
	if p, ok := peer.FromContext(ctx); ok {
		in.Peer = p.Addr
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			in.TLS = &ti.State
		}
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get("authorization") {
			if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
				in.Bearer = strings.TrimSpace(v[7:])
				break
			}
		}
	}
	return in
}

// CreateCertificate authenticates the caller, checks the CSR against the
// authenticated identity, signs it, records the certificate in the ledger
// and only then returns it.
func (s *csrServer) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	start := s.now()
	s.metrics.csr.Inc()
	in := authInput(ctx)
	peerAddr := ""
	if in.Peer != nil {
		peerAddr = in.Peer.String()
	}

	caller, err := authenticate(ctx, s.auths, in)
	if err != nil {
		s.metrics.authnFailure.Inc()
		return nil, s.refuse(reasonAuthentication, errUnauthenticated, err, peerAddr, nil)
	}
	if !s.limiter.allow(limitKey(caller.Identity, in.Peer), start) {
		return nil, s.refuse(reasonRateLimited, errRateLimited, errors.New("per-caller rate limit"), peerAddr, caller)
	}
	csr, err := ca.ParseCSR([]byte(req.GetCsr()))
	if err == nil {
		err = ca.CheckCSR(csr, caller.Identity)
	}
	if err != nil {
		reason := ca.Reason(err)
		if reason == "malformed" || reason == "bad_signature" {
			s.metrics.parseErr.Inc()
		}
		return nil, s.refuse(reason, errRefused, err, peerAddr, caller)
	}
	t := s.trust.Load()
	ttl := s.ttl(req.GetValidityDuration(), t)
	var (
		leafDER  []byte
		serial   string
		notAfter time.Time
		rootID   string
		tail     []string
	)
	if ext := s.ext.Load(); ext != nil {
		el, err := signExternal(ctx, ext, csr, caller.Identity, ttl, start)
		if err != nil {
			return nil, s.refuse(reasonSigner, errUnavailable, err, peerAddr, caller)
		}
		if err := s.trustRoot(el.root); err != nil {
			return nil, s.refuse(reasonInternal, errInternal, err, peerAddr, caller)
		}
		t = s.trust.Load()
		leafDER, serial, notAfter, rootID = el.der, el.serial, el.notAfter, ca.CertID(el.root)
		tail = append(el.intermediates, string(t.bundlePEM))
	} else {
		leaf, err := t.signer.Issue(&ca.LeafRequest{
			PublicKey: csr.PublicKey,
			RawSPKI:   csr.RawSPKI,
			URIs:      []string{caller.Identity},
			NotBefore: start.Add(-time.Minute), // tolerate callers whose clock is a little behind
			NotAfter:  start.Add(ttl),
		})
		if err != nil {
			return nil, s.refuse(reasonInternal, errInternal, err, peerAddr, caller)
		}
		leafDER, serial, notAfter, rootID, tail = leaf.DER, leaf.Serial, leaf.NotAfter, t.signerRoot, t.tail
	}
	crashPoint("sign")
	err = s.ledger.record(caller.Spend, certRecord{
		Serial:        serial,
		Identity:      caller.Identity,
		Issued:        start.UTC(),
		NotAfter:      notAfter,
		Caller:        peerAddr,
		Authenticator: caller.Authenticator + ": " + caller.Credential,
		Root:          rootID,
		Renews:        caller.Renews,
	})
	var spendErr *spendError
	switch {
	case errors.As(err, &spendErr):
		s.metrics.authnFailure.Inc()
		return nil, s.refuse(reasonAuthentication, errUnauthenticated, spendErr.err, peerAddr, caller)
	case err != nil:
		// Not on record, so not handed out.
		return nil, s.refuse(reasonInternal, errInternal, err, peerAddr, caller)
	}
	chain := make([]string, 0, 1+len(tail))
	chain = append(chain, string(ca.EncodeCertPEM(leafDER)))
	chain = append(chain, tail...)
	s.metrics.success.Inc()
	s.metrics.duration.Observe(s.now().Sub(start).Seconds())
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("certificate issued", "identity", caller.Identity, "serial", serial, "notAfter", notAfter,
			"peer", peerAddr, "authenticator", caller.Authenticator, "credential", caller.Credential)
	}
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

// limitKey names a caller for the rate limit: its identity from its
// address. The replicas of a deployment share an identity but not an
// address, so a rolling restart is not throttled, while one workload
// renewing in a loop (each time with its newest certificate) is.
func limitKey(identity string, addr net.Addr) string {
	if addr == nil {
		return identity
	}
	host := addr.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return identity + "@" + host
}

// ttl picks the leaf lifetime: the request's, cut to MaxTTL, or DefaultTTL;
// while a rotation is staged, at most stagedTTL jittered down to half of it,
// so holders of old-root leaves come back soon and not all at once.
func (s *csrServer) ttl(requestedSeconds int64, t *trustSnapshot) time.Duration {
	ttl := s.leaf.DefaultTTL
	if requestedSeconds > 0 {
		ttl = s.leaf.MaxTTL
		if requestedSeconds < int64(s.leaf.MaxTTL/time.Second) {
			ttl = time.Duration(requestedSeconds) * time.Second
		}
	}
	if t.stagedTTL > 0 {
		half := t.stagedTTL / 2
		ttl = min(ttl, half+rand.N(half+1))
	}
	return ttl
}

// refuse counts and logs a refusal and returns the opaque error for the
// caller.
func (s *csrServer) refuse(reason string, public, cause error, peerAddr string, c *Caller) error {
	s.metrics.refused.WithLabelValues(reason).Inc()
	attrs := []any{"reason", reason, "error", cause.Error(), "peer", peerAddr}
	if c != nil {
		attrs = append(attrs, "identity", c.Identity, "authenticator", c.Authenticator, "credential", c.Credential)
	}
	s.log.Warn("certificate request refused", attrs...)
	return public
}
