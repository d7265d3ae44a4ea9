package citadel

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"

	xapi "github.com/meshd/meshd/xds/api"
)

// xdsServer is the part of the xDS module citadel uses, declared here by
// its consumer: the TLS port and the CSR service on it, the SDS generator
// and its pushes, and the proxies' acknowledgements.
type xdsServer interface {
	xapi.TLSEnabler
	xapi.ServiceRegistry
	xapi.GeneratorRegistry
	xapi.Pusher
	xapi.StatusSource
}

// xdsLink is how the CA follows and feeds the xDS server.
type xdsLink struct {
	srv xdsServer
}

// attach wires the CA into the xDS server: the TLS config of :15012, the
// CSR service (TLS only), and the ROOTCA secret over SDS.
func (m *Module) attach(x xdsServer) error {
	if err := x.EnableTLS(m.TLSConfig()); err != nil {
		return fmt.Errorf("enable TLS on the xDS server: %w", err)
	}
	if err := x.RegisterService(m.server.register, true); err != nil {
		return fmt.Errorf("register the CSR service: %w", err)
	}
	if err := x.RegisterGenerator(xapi.SecretType, sdsGenerator{&m.trust}); err != nil {
		return fmt.Errorf("register the SDS generator: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.xds = &xdsLink{srv: x}
	return nil
}

// bundleChanged pushes the new ROOTCA to every proxy subscribed to it.
func (l *xdsLink) bundleChanged(*trustSnapshot) {
	l.srv.Push(xapi.PushRequest{Updates: map[string][]string{xapi.SecretType: {SDSRootName}}, Reason: "cert"})
}

// proxyBundles returns, for each connected stream that subscribed to SDS,
// the bundle version it acknowledged (0: none yet). The SDS generator gives
// ROOTCA its bundle version as the resource version, and the xDS server
// reports which resource version each stream acknowledged.
func (l *xdsLink) proxyBundles() []uint64 {
	acked := l.srv.AckedVersions(xapi.SecretType, SDSRootName)
	out := make([]uint64, 0, len(acked))
	for _, v := range acked {
		n, _ := strconv.ParseUint(v, 10, 64)
		out = append(out, n)
	}
	return out
}

// sdsGenerator serves the trust bundle as the SDS secret ROOTCA. Every
// proxy gets the same one, so all share one key.
type sdsGenerator struct {
	trust *atomic.Pointer[trustSnapshot]
}

func (sdsGenerator) Key(*xapi.Proxy) string { return "" }

func (g sdsGenerator) Generate(_ context.Context, req xapi.GenerateRequest) ([]xapi.Resource, error) {
	if req.Names != nil && !slices.Contains(req.Names, SDSRootName) {
		return nil, nil
	}
	t := g.trust.Load()
	return []xapi.Resource{{Name: SDSRootName, Message: t.secret, Version: strconv.FormatUint(t.version, 10)}}, nil
}
