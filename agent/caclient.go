package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshd/meshd/modules/pilot/generate"
	xdsapi "github.com/meshd/meshd/xds/api"
)

// Errors the agent tells apart.
var (
	// ErrUntrustedServer: meshd's certificate does not chain to a root the
	// agent trusts, or not for controlPlane.serverName.
	ErrUntrustedServer = errors.New("meshd's certificate is not trusted")
	// ErrRefused: the CA refused the credential (join token or certificate).
	ErrRefused = errors.New("the CA refused the credential")
	// ErrPinMismatch: no root in meshd's trust bundle has the configured pin.
	ErrPinMismatch = errors.New("no root in meshd's trust bundle matches controlPlane.rootPin")
)

// verifier checks meshd's serving certificate against the roots roots()
// returns, for the configured server name. It remembers the last failure,
// which gRPC otherwise flattens into an Unavailable status.
type verifier struct {
	name  string
	roots func() *x509.CertPool

	mu   sync.Mutex
	last error
}

func (v *verifier) verify(cs tls.ConnectionState) error {
	err := verifyChain(cs.PeerCertificates, v.roots(), v.name)
	if err != nil {
		err = fmt.Errorf("%w: %v", ErrUntrustedServer, err)
	}
	v.mu.Lock()
	v.last = err
	v.mu.Unlock()
	return err
}

// lastErr returns the last verification's error (nil when it passed).
func (v *verifier) lastErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last
}

func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, name string) error {
	if len(certs) == 0 {
		return errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		DNSName: name, Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

// transport returns TLS credentials for meshd: its certificate checked by
// v, and the client certificate cert() returns at each handshake (none when
// it returns nil).
func transport(v *verifier, cert func() *tls.Certificate) credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is verified by VerifyConnection against roots that
		// change with rotation; tls.Config.RootCAs cannot change.
		InsecureSkipVerify: true,
		VerifyConnection:   v.verify,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := cert(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
	})
}

// dialErr explains a failed call to meshd: an untrusted server, or the
// transport error as gRPC reported it.
func dialErr(v *verifier, addr string, err error) error {
	if verr := v.lastErr(); verr != nil && status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%s: %w (controlPlane.rootCertFile or rootPin must name meshd's root, and controlPlane.serverName one of the names "+
			"in its serving certificate; if meshd's roots were rotated while this agent was away, put the current ones from meshd ca roots "+
			"in rootCertFile and restart the agent)", addr, verr)
	}
	return fmt.Errorf("%s: %w", addr, err)
}

// requestCert asks the CA at addr for a certificate for id with a new key,
// authenticated by token (a join token) or, when token is empty, by
// cert (the current certificate). It checks the response: the leaf is for
// id and the new key, and chains to the bundle that comes with it.
func requestCert(ctx context.Context, addr string, v *verifier, cert *tls.Certificate, token, id string, ttl time.Duration) (*creds, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, err
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	var client func() *tls.Certificate
	if token == "" {
		client = func() *tls.Certificate { return cert }
	} else {
		client = func() *tls.Certificate { return nil }
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(transport(v, client)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(csr), ValidityDuration: int64(ttl / time.Second),
	})
	if err != nil {
		switch status.Code(err) {
		case codes.Unauthenticated, codes.PermissionDenied:
			return nil, fmt.Errorf("%w: %s", ErrRefused, status.Convert(err).Message())
		case codes.InvalidArgument:
			return nil, fmt.Errorf("the CA refused the certificate request (%s); meshd's log says why", status.Convert(err).Message())
		}
		return nil, dialErr(v, addr, err)
	}
	chain := resp.GetCertChain()
	if len(chain) < 2 {
		return nil, fmt.Errorf("the CA answered %d PEM blocks; want the certificate chain and the trust bundle", len(chain))
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	c, err := newCreds(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		[]byte(strings.Join(chain[:len(chain)-1], "")), []byte(chain[len(chain)-1]), id)
	if err != nil {
		return nil, fmt.Errorf("the CA's answer: %w", err)
	}
	return c, nil
}

// fetchBundle gets meshd's trust bundle without trusting meshd yet, and
// keeps it only if meshd proves itself under the pinned root: the bundle
// must contain a root with the pin, and the certificate meshd presented on
// this very connection (whose key it holds, or the handshake would have
// failed) must chain to that root for the server name. Only then is the
// bundle, which came over that connection, believed.
func fetchBundle(ctx context.Context, addr, serverName string, pin []byte, node *corev3.Node) ([]byte, error) {
	var mu sync.Mutex
	var peerCerts []*x509.Certificate
	creds := credentials.NewTLS(&tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // checked below, against the pinned root
		VerifyConnection: func(cs tls.ConnectionState) error {
			mu.Lock()
			peerCerts = cs.PeerCertificates
			mu.Unlock()
			return nil
		},
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: xdsapi.SecretType, ResourceNames: []string{generate.SecretRootCA}}); err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	var bundle []byte
	for bundle == nil {
		resp, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("%s: trust bundle: %w", addr, err)
		}
		bundle = rootCAFrom(resp)
	}
	mu.Lock()
	presented := peerCerts
	mu.Unlock()
	roots, err := parseCerts(bundle)
	if err != nil {
		return nil, fmt.Errorf("meshd's trust bundle: %w", err)
	}
	var pinned *x509.Certificate
	var have []string
	for _, r := range roots {
		sum := sha256.Sum256(r.Raw)
		if bytes.Equal(sum[:], pin) {
			pinned = r
		}
		have = append(have, Pin(r.Raw)+" ("+r.Subject.String()+")")
	}
	if pinned == nil {
		return nil, fmt.Errorf("%w: meshd at %s offers %s", ErrPinMismatch, addr, strings.Join(have, ", "))
	}
	pool := x509.NewCertPool()
	pool.AddCert(pinned)
	if err := verifyChain(presented, pool, serverName); err != nil {
		return nil, fmt.Errorf("%w: its certificate does not verify under the pinned root for %q: %v", ErrUntrustedServer, serverName, err)
	}
	return bundle, nil
}

// rootCAFrom returns the trust bundle in an SDS response's ROOTCA secret,
// or nil when the response has none.
func rootCAFrom(resp *discoveryv3.DiscoveryResponse) []byte {
	for _, a := range resp.GetResources() {
		var s tlsv3.Secret
		if a.UnmarshalTo(&s) != nil || s.GetName() != generate.SecretRootCA {
			continue
		}
		if b := s.GetValidationContext().GetTrustedCa().GetInlineBytes(); len(b) > 0 {
			return b
		}
	}
	return nil
}

// parseCerts parses every CERTIFICATE block of a PEM bundle.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM data")
	}
	return out, nil
}
