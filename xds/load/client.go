package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // the codec liteCodec delegates to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/xds/api"
)

// liteResp is what a simulated proxy reads of a response: the envelope,
// and how many resources it carries. It does not decode resources, so the
// driver's CPU goes to moving bytes, not to parsing them, and the server
// gets most of the two cores.
type liteResp struct {
	version, typeURL, nonce string
	resources, removed      int
	size                    int
}

// liteCodec encodes requests with proto and reads responses into liteResp.
type liteCodec struct{}

var protoCodec = encoding.GetCodecV2("proto")

func (liteCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }
func (liteCodec) Name() string                           { return "proto" }

func (liteCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*liteResp)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	r.size = data.Len()
	rd := data.Reader()
	defer rd.Close()
	for rd.Remaining() > 0 {
		tag, err := readVarint(rd)
		if err != nil {
			return err
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		if typ != protowire.BytesType {
			if typ == protowire.VarintType {
				if _, err := readVarint(rd); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("unexpected wire type %d", typ)
		}
		n, err := readVarint(rd)
		if err != nil {
			return err
		}
		switch num {
		case 1, 4, 5: // version / system version, type_url, nonce
			b := make([]byte, n)
			if _, err := io.ReadFull(rd, b); err != nil {
				return err
			}
			switch num {
			case 1:
				r.version = string(b)
			case 4:
				r.typeURL = string(b)
			case 5:
				r.nonce = string(b)
			}
			continue
		case 2:
			r.resources++
		case 6:
			r.removed++ // delta removed_resources (sotw control_plane never set here)
		}
		if _, err := rd.Discard(int(n)); err != nil {
			return err
		}
	}
	return nil
}

func readVarint(rd *mem.Reader) (uint64, error) {
	var v uint64
	for shift := 0; shift < 64; shift += 7 {
		b, err := rd.ReadByte()
		if err != nil {
			return 0, err
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("varint overflow")
}

// plan says what a simulated proxy subscribes to.
type plan struct {
	delta bool
	// CDS wildcard; with envoy, also EDS by name after CDS, LDS wildcard
	// and RDS by name after LDS, like an Envoy sidecar. Delta without
	// envoy: EDS wildcard only.
	envoy    bool
	services int
}

// proxy is one simulated proxy on its own connection.
type proxy struct {
	id   int
	cc   *grpc.ClientConn
	st   grpc.ClientStream
	node *corev3.Node
	plan plan
	eds  []string // EDS names to subscribe
	tr   *tracker

	mu      sync.Mutex
	got     map[string]int // resources in the last response (sotw) or held (delta), by type
	counted int32          // last phase this proxy completed
	sendMu  sync.Mutex
}

const (
	adsMethod   = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	deltaMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
)

func proxyNode(i int) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		api.MetaNamespace:      namespace,
		api.MetaServiceAccount: fmt.Sprintf("client-%d", i%50),
		api.MetaLabels:         map[string]any{"app": fmt.Sprintf("client-%d", i%50), "version": "v1"},
		api.MetaClusterID:      "Kubernetes",
		"ISTIO_VERSION":        "1.24.0",
	})
	return &corev3.Node{
		Id:            fmt.Sprintf("sidecar~10.%d.%d.%d~client-%d.%s~%s.svc.cluster.local", 100+i>>16&255, i>>8&255, i&255, i, namespace, namespace),
		Cluster:       "client." + namespace,
		Metadata:      md,
		UserAgentName: "envoy",
	}
}

func dialProxy(ctx context.Context, addr string, i int, p plan, eds []string, tr *tracker) (*proxy, error) {
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(liteCodec{}), grpc.MaxCallRecvMsgSize(256<<20)),
		// Large static windows, as Envoy uses: a 1 MB response goes out
		// without waiting for window updates.
		grpc.WithInitialWindowSize(16<<20), grpc.WithInitialConnWindowSize(32<<20),
		grpc.WithReadBufferSize(64<<10), grpc.WithWriteBufferSize(16<<10), grpc.WithSharedWriteBuffer(true),
	)
	if err != nil {
		return nil, err
	}
	method := adsMethod
	if p.delta {
		method = deltaMethod
	}
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		cc.Close()
		return nil, err
	}
	px := &proxy{id: i, cc: cc, st: st, node: proxyNode(i), plan: p, eds: eds, tr: tr, got: map[string]int{}}
	return px, nil
}

func (p *proxy) send(m any) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	return p.st.SendMsg(m)
}

// start sends the first requests and runs the receive loop until the
// stream ends.
func (p *proxy) start() error {
	if p.plan.delta && p.plan.envoy {
		if err := p.send(&discovery.DeltaDiscoveryRequest{Node: p.node, TypeUrl: api.ClusterType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			return err
		}
		return p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: api.ListenerType, ResourceNamesSubscribe: []string{"*"}})
	}
	if p.plan.delta {
		return p.send(&discovery.DeltaDiscoveryRequest{Node: p.node, TypeUrl: api.EndpointType, ResourceNamesSubscribe: []string{"*"}})
	}
	if err := p.send(&discovery.DiscoveryRequest{Node: p.node, TypeUrl: api.ClusterType}); err != nil {
		return err
	}
	if p.plan.envoy {
		return p.send(&discovery.DiscoveryRequest{TypeUrl: api.ListenerType})
	}
	return nil
}

func (p *proxy) run() error {
	first := map[string]bool{}
	for {
		var r liteResp
		if err := p.st.RecvMsg(&r); err != nil {
			return err
		}
		var err error
		if p.plan.delta {
			err = p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.typeURL, ResponseNonce: r.nonce})
			if err == nil && p.plan.envoy && !first[r.typeURL] {
				switch r.typeURL {
				case api.ClusterType:
					err = p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: api.EndpointType, ResourceNamesSubscribe: p.eds})
				case api.ListenerType:
					err = p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: api.RouteType, ResourceNamesSubscribe: []string{RouteName}})
				}
			}
		} else {
			var names []string
			switch r.typeURL {
			case api.EndpointType:
				names = p.eds
			case api.RouteType:
				names = []string{RouteName}
			}
			err = p.send(&discovery.DiscoveryRequest{TypeUrl: r.typeURL, VersionInfo: r.version, ResponseNonce: r.nonce, ResourceNames: names})
			if err == nil && p.plan.envoy && !first[r.typeURL] {
				switch r.typeURL {
				case api.ClusterType:
					err = p.send(&discovery.DiscoveryRequest{TypeUrl: api.EndpointType, ResourceNames: p.eds})
				case api.ListenerType:
					err = p.send(&discovery.DiscoveryRequest{TypeUrl: api.RouteType, ResourceNames: []string{RouteName}})
				}
			}
		}
		if err != nil {
			return err
		}
		first[r.typeURL] = true
		p.mu.Lock()
		if p.plan.delta {
			p.got[r.typeURL] += r.resources - r.removed
		} else {
			p.got[r.typeURL] = r.resources
		}
		p.mu.Unlock()
		p.tr.observe(p, &r)
	}
}

// complete says whether the proxy holds the full config of its plan.
func (p *proxy) complete() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.plan.services
	if p.plan.delta && !p.plan.envoy {
		return p.got[api.EndpointType] >= n
	}
	if p.got[api.ClusterType] != n {
		return false
	}
	return !p.plan.envoy || (p.got[api.EndpointType] == n && p.got[api.ListenerType] == 1 && p.got[api.RouteType] == 1)
}

func (p *proxy) close() {
	p.cc.Close()
}

// phase is one measured step: from t0, every proxy reaching pred once.
type phase struct {
	id   int32
	t0   time.Time
	pred func(p *proxy, r *liteResp) bool
	lat  []time.Duration // per proxy: t0 to the ACK that completed it
	done atomic.Int64
}

type tracker struct {
	cur atomic.Pointer[phase]
}

func (t *tracker) observe(p *proxy, r *liteResp) {
	ph := t.cur.Load()
	if ph == nil || p.counted == ph.id || !ph.pred(p, r) {
		return
	}
	p.counted = ph.id
	ph.lat[p.id] = time.Since(ph.t0)
	ph.done.Add(1)
}
