package citadel

import (
	"crypto/tls"
	"fmt"

	"google.golang.org/grpc"
)

// xdsServer is the part of the xDS module citadel uses, declared here by
// its consumer. The xDS module serves xDS and TLS-only services on :15012
// with the TLS config citadel gives it.
type xdsServer interface {
	EnableTLS(cfg *tls.Config) error
	RegisterService(fn func(grpc.ServiceRegistrar), tlsOnly bool)
}

// xdsLink is how the CA follows and feeds the xDS server: it learns which
// bundle each connected proxy acknowledged and tells the server when the
// bundle changed.
type xdsLink interface {
	// bundleChanged is called (under the CA lock) after every bundle change.
	bundleChanged(t *trustSnapshot)
	// proxyBundles returns the bundle version each connected proxy
	// acknowledged, 0 for none yet.
	proxyBundles() []uint64
}

// attach wires the CA into the xDS server: the TLS config of :15012 and the
// CSR service, served on TLS only.
func (m *Module) attach(x xdsServer) error {
	if err := x.EnableTLS(m.TLSConfig()); err != nil {
		return fmt.Errorf("enable TLS on the xDS server: %w", err)
	}
	x.RegisterService(m.server.register, true)
	if l, ok := x.(xdsLink); ok {
		m.xds = l
	}
	return nil
}
