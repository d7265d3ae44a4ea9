package citadel

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/meshd/meshd/modules/citadel/ca"
	xapi "github.com/meshd/meshd/xds/api"
	"google.golang.org/protobuf/proto"
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

	mu sync.Mutex
	// versions maps the version the xDS server gives the SDS set of a
	// bundle to that bundle's version, so acknowledgements can be read.
	versions map[string]uint64
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
	l := &xdsLink{srv: x, versions: map[string]uint64{}}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.xds = l
	// Learn the SDS versions of the recent bundles, so proxies that
	// acknowledged one before a restart are counted right.
	for v, ids := range m.state.Bundles {
		var pem []byte
		for _, id := range ids {
			c, err := m.rootCert(id)
			if err != nil {
				m.log.Warn("cannot rebuild an earlier trust bundle; proxies still on it show as unknown", "bundleVersion", v, "error", err)
				pem = nil
				break
			}
			pem = append(pem, ca.EncodeCertPEM(c.Raw)...)
		}
		if pem != nil {
			if sv, err := sdsVersion(rootCASecret(pem)); err == nil {
				l.versions[sv] = v
			}
		}
	}
	l.versions[m.trust.Load().sdsVersion] = m.trust.Load().version
	return nil
}

// bundleChanged pushes the new ROOTCA to every proxy subscribed to it.
func (l *xdsLink) bundleChanged(t *trustSnapshot) {
	l.mu.Lock()
	l.versions[t.sdsVersion] = t.version
	l.mu.Unlock()
	l.srv.Push(xapi.PushRequest{Updates: map[string][]string{xapi.SecretType: {SDSRootName}}, Reason: "cert"})
}

// proxyBundles returns, for each connected stream that subscribed to SDS,
// the bundle version it acknowledged (0: none, or one this process cannot
// tell).
func (l *xdsLink) proxyBundles() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []uint64
	for _, ps := range l.srv.Statuses() {
		for _, ts := range ps.Types {
			if ts.TypeURL == xapi.SecretType {
				out = append(out, l.versions[ts.VersionAcked])
			}
		}
	}
	return out
}

// sdsVersion is the version the xDS server gives an SDS set holding only
// secret: it names a set by an order-independent hash of (name, xxhash of
// the deterministic encoding) pairs (xds/server/snapshot.go). citadel
// recomputes it to map acknowledged versions to bundles; the xds tests in
// this package pin the two together, so a change on either side fails them.
func sdsVersion(secret proto.Message) (string, error) {
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(secret)
	if err != nil {
		return "", err
	}
	sum := xxhash.Sum64String(SDSRootName) ^ (xxhash.Sum64(value) * 0x9E3779B97F4A7C15)
	return strconv.FormatUint(sum, 36) + "-1", nil
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
