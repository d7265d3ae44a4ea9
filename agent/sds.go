package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/modules/pilot/generate"
)

// sdsServer serves the workload certificate (SDS secret "default") and the
// trust bundle ("ROOTCA") to the local Envoy over a Unix socket, Istio's
// names, so the TLS contexts meshd generates (which point at the sds-grpc
// cluster) find them. Every Envoy that connects gets the same secrets.
type sdsServer struct {
	path  string
	cache cachev3.SnapshotCache
	grpc  *grpc.Server
	lis   net.Listener

	mu      sync.Mutex
	version uint64
}

// anyNode maps every node to one snapshot: the socket serves one workload.
type anyNode struct{}

func (anyNode) ID(*corev3.Node) string { return "" }

// newSDSServer listens on the Unix socket path (owner-only: whoever can
// connect gets the private key). A stale socket from an earlier run is
// replaced; any other file there is an error.
func newSDSServer(path string) (*sdsServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sds.socket: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("sds.socket: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("sds.socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("sds.socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("sds.socket: %w", err)
	}
	s := &sdsServer{path: path, lis: lis, cache: cachev3.NewSnapshotCache(false, anyNode{}, nil), grpc: grpc.NewServer()}
	return s, nil
}

// set publishes c's certificate and bundle; connected Envoys receive them
// at once.
func (s *sdsServer) set(c *creds) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version++
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(s.version, 10), map[resourcev3.Type][]types.Resource{
		resourcev3.SecretType: {
			&tlsv3.Secret{Name: generate.SecretDefault, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: c.chainPEM}},
				PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: c.keyPEM}},
			}}},
			&tlsv3.Secret{Name: generate.SecretRootCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: c.bundlePEM}},
			}}},
		},
	})
	if err != nil {
		return err
	}
	return s.cache.SetSnapshot(context.Background(), "", snap)
}

// serve serves until ctx ends.
func (s *sdsServer) serve(ctx context.Context) error {
	srv := serverv3.NewServer(ctx, s.cache, nil)
	secretv3.RegisterSecretDiscoveryServiceServer(s.grpc, srv)
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	select {
	case <-ctx.Done():
		s.grpc.Stop() // Envoy's streams never end by themselves
		<-errc
		os.Remove(s.path)
		return nil
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return fmt.Errorf("sds server: %w", err)
	}
}
