// Package pluginsigner runs certificate signers out of process: the gRPC
// shims of the signer plugin kind (core/plugin/proto/signer/v1) on both
// sides of the plugin boundary, a built-in api.Signer over citadel's own CA
// (Local), and the module citadel-plugins that hands the signer plugin
// declared in meshd.yaml to citadel.
//
// The host does not trust what a plugin signs: CheckChain verifies that the
// leaf carries the CSR's key and exactly the requested identities, that it
// does not outlive the request, and that each certificate is signed by the
// next, before citadel hands the chain to a workload.
package pluginsigner

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/core/plugin"
	signerv1 "github.com/meshd/meshd/core/plugin/proto/signer/v1"
	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/ca"
)

// Kind is the plugin kind this package serves.
const Kind = plugin.KindSigner

// Limits on a signer's answer.
const (
	maxChain     = 8
	maxCertBytes = 64 << 10
	// ttlSlack is how far past the requested lifetime a leaf may run
	// (clock skew, rounding by the external CA).
	ttlSlack = 5 * time.Minute
)

// New returns an api.Signer backed by a plugin instance. It does not wait
// for a plugin that is down: Sign fails at once with an error wrapping
// plugin.ErrDown, and the workload retries later with its current
// certificate still valid.
func New(in *plugin.Instance) api.Signer { return &instanceSigner{in: in} }

type instanceSigner struct{ in *plugin.Instance }

func (s *instanceSigner) Sign(ctx context.Context, req api.SignRequest) ([][]byte, error) {
	conn, err := s.in.Current()
	if err != nil {
		return nil, err
	}
	if p := conn.Protocol(); p != 1 {
		return nil, plugin.Error(s.in.Name(), fmt.Errorf("%w: no signer client for protocol %d", plugin.ErrIncompatible, p))
	}
	chain, err := sign(ctx, conn.ClientConn(), req, time.Now)
	return chain, plugin.Error(s.in.Name(), err)
}

// NewClient returns an api.Signer calling the signer service over cc: the
// host side of the shim pair without the plugins module.
func NewClient(cc grpc.ClientConnInterface) api.Signer { return &connSigner{cc: cc} }

type connSigner struct{ cc grpc.ClientConnInterface }

func (s *connSigner) Sign(ctx context.Context, req api.SignRequest) ([][]byte, error) {
	return sign(ctx, s.cc, req, time.Now)
}

func sign(ctx context.Context, cc grpc.ClientConnInterface, req api.SignRequest, now func() time.Time) (_ [][]byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("signer client: panic: %v", r)
		}
	}()
	resp, err := signerv1.NewSignerClient(cc).Sign(ctx, &signerv1.SignRequest{
		Csr: req.CSR, Uris: req.URIs, DnsNames: req.DNSNames, TtlSeconds: int64(req.TTL / time.Second),
	})
	if err != nil {
		if s, ok := status.FromError(err); ok {
			return nil, fmt.Errorf("sign: %s: %s", s.Code(), s.Message())
		}
		return nil, fmt.Errorf("sign: %w", err)
	}
	chain := resp.GetChain()
	if err := CheckChain(req, chain, now()); err != nil {
		return nil, fmt.Errorf("sign: the signer's certificate is unusable: %w", err)
	}
	return chain, nil
}

// CheckChain verifies a signer's answer to req: the leaf has the CSR's
// public key, exactly the requested URIs and DNS names, a lifetime within
// the request's TTL, and each certificate is signed by the next one.
func CheckChain(req api.SignRequest, chain [][]byte, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("empty chain")
	}
	if len(chain) > maxChain {
		return fmt.Errorf("chain of %d certificates, more than %d", len(chain), maxChain)
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		if len(der) > maxCertBytes {
			return fmt.Errorf("certificate %d is larger than %d bytes", i, maxCertBytes)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return fmt.Errorf("request CSR: %w", err)
	}
	leaf := certs[0]
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
		return errors.New("the leaf's public key is not the CSR's")
	}
	var uris []string
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	if !sameSet(uris, req.URIs) {
		return fmt.Errorf("the leaf's URIs %v are not the requested %v", uris, req.URIs)
	}
	if !sameSet(leaf.DNSNames, req.DNSNames) {
		return fmt.Errorf("the leaf's DNS names %v are not the requested %v", leaf.DNSNames, req.DNSNames)
	}
	if leaf.IsCA {
		return errors.New("the leaf is a CA certificate")
	}
	if now.Before(leaf.NotBefore.Add(-ttlSlack)) || now.After(leaf.NotAfter) {
		return fmt.Errorf("the leaf is not valid now (%s to %s)", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if req.TTL > 0 && leaf.NotAfter.After(now.Add(req.TTL+ttlSlack)) {
		return fmt.Errorf("the leaf expires %s, later than the requested %s", leaf.NotAfter.UTC().Format(time.RFC3339), req.TTL)
	}
	for i := 0; i+1 < len(certs); i++ {
		if !certs[i+1].IsCA {
			return fmt.Errorf("certificate %d (%q) signs certificate %d but is not a CA", i+1, certs[i+1].Subject, i)
		}
		if err := certs[i].CheckSignatureFrom(certs[i+1]); err != nil {
			return fmt.Errorf("certificate %d is not signed by certificate %d: %w", i, i+1, err)
		}
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// Local is the built-in signer: citadel's own CA (a ca.Authority) behind
// the api.Signer interface.
func Local(a *ca.Authority) api.Signer { return &local{a: a, now: time.Now} }

type local struct {
	a   *ca.Authority
	now func() time.Time
}

func (l *local) Sign(ctx context.Context, req api.SignRequest) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	lr := &ca.LeafRequest{PublicKey: csr.PublicKey, RawSPKI: csr.RawSubjectPublicKeyInfo, URIs: req.URIs, DNSNames: req.DNSNames}
	now := l.now()
	lr.NotBefore, lr.NotAfter = now.Add(-time.Minute), now.Add(req.TTL)
	leaf, err := l.a.Issue(lr)
	if err != nil {
		return nil, err
	}
	chain := [][]byte{leaf.DER}
	for _, c := range l.a.Chain() {
		chain = append(chain, c.Raw)
	}
	return chain, nil
}

// Register serves s as the signer service on srv: the plugin side of the
// shim pair.
func Register(srv *grpc.Server, s api.Signer) error {
	signerv1.RegisterSignerServer(srv, &server{s: s})
	return nil
}

// Plugin returns the go-plugin plugin for the signer kind: s served on the
// plugin side, an api.Signer on the host side.
func Plugin(s api.Signer) *plugin.GRPCPlugin {
	return &plugin.GRPCPlugin{
		Register: func(srv *grpc.Server) error { return Register(srv, s) },
		Connect: func(_ context.Context, cc *grpc.ClientConn) (any, error) {
			return NewClient(cc), nil
		},
	}
}

type server struct {
	signerv1.UnimplementedSignerServer
	s api.Signer
}

func (s *server) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	chain, err := s.s.Sign(ctx, api.SignRequest{
		CSR: req.GetCsr(), URIs: req.GetUris(), DNSNames: req.GetDnsNames(), TTL: time.Duration(req.GetTtlSeconds()) * time.Second,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, status.FromContextError(err).Err()
		}
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return &signerv1.SignResponse{Chain: chain}, nil
}
