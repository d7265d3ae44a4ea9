package server

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/xds/api"
)

// testClusters returns n clusters of about 1 kB each; gen changes them all.
func testClusters(n, gen int) []api.Resource {
	out := make([]api.Resource, n)
	for i := range n {
		name := fmt.Sprintf("outbound|80||svc-%d.ns.svc.cluster.local", i)
		md, _ := structpb.NewStruct(map[string]any{"config": strings.Repeat("x", 800), "gen": gen})
		out[i] = api.Resource{Name: name, Message: &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{}}},
			ConnectTimeout:       durationpb.New(time.Second),
			Metadata:             &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": md}},
		}}
	}
	return out
}

// TestEncodeMatchesProto checks the pre-encoded responses parse to exactly
// what go-control-plane would have marshalled.
func TestEncodeMatchesProto(t *testing.T) {
	snap, err := build(api.ClusterType, nil, testClusters(5, 0), nil, clusterRefs)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		all  bool
		sel  []*entry
	}{
		{"whole set, shared bytes", true, nil},
		{"subset, copied", false, []*entry{snap.sorted[1], snap.sorted[3]}},
		{"empty", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &sotwResp{snap: snap, sel: tt.sel, all: tt.all}
			want, _ := r.GetDiscoveryResponse()
			want.Nonce = "42"
			enc, _ := encodeSotw(r, "42")
			var got discovery.DiscoveryResponse
			if err := proto.Unmarshal(enc.data.Materialize(), &got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, want) {
				t.Errorf("got %v\nwant %v", &got, want)
			}

			d := &deltaResp{snap: snap, send: tt.sel, all: tt.all, removed: []string{"gone-1", "gone-2"}, ct: &connType{c: &conn{}}, x: &xdsCache{}}
			dwant, _ := d.GetDeltaDiscoveryResponse()
			dwant.Nonce = "7"
			denc, _ := encodeDelta(d, "7")
			var dgot discovery.DeltaDiscoveryResponse
			if err := proto.Unmarshal(denc.data.Materialize(), &dgot); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&dgot, dwant) {
				t.Errorf("delta: got %v\nwant %v", &dgot, dwant)
			}
		})
	}
}

func TestBuildSharesUnchangedEntries(t *testing.T) {
	a, err := build(api.ClusterType, nil, testClusters(10, 0), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	res := testClusters(10, 0)
	res[3] = testClusters(10, 1)[3]
	b, err := build(api.ClusterType, a, res, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.changed) != 1 || b.changed[0] != res[3].Name || a.version == b.version {
		t.Fatalf("changed %v, versions %s %s", b.changed, a.version, b.version)
	}
	for i, e := range b.sorted {
		if shared := a.sorted[i] == e; shared != (e.name != res[3].Name) {
			t.Errorf("%s: shared=%v", e.name, shared)
		}
	}
	if same, _ := build(api.ClusterType, b, res, nil, nil); same != b {
		t.Error("an identical set must return the same snapshot")
	}
	// Incremental: one name; the rest untouched.
	c, err := build(api.ClusterType, b, []api.Resource{testClusters(10, 2)[5]}, []string{res[5].Name, "gone"}, nil)
	if err != nil || len(c.changed) != 1 || len(c.entries) != 10 {
		t.Fatalf("incremental: %v changed %v, %d entries", err, c.changed, len(c.entries))
	}
	if got, ok := c.changesSince(a); !ok || len(got) != 2 {
		t.Errorf("changes since a: %v %v", got, ok)
	}
	// Not asked for is refused.
	if _, err := build(api.ClusterType, b, []api.Resource{res[1]}, []string{res[5].Name}, nil); err == nil {
		t.Error("a resource outside the incremental names must be refused")
	}
}

// BenchmarkEncodeFullSet compares a full CDS response of 1,000 clusters as
// meshd sends it (header + shared bytes) with proto.Marshal of the same
// response with cached Any values, per proxy.
func BenchmarkEncodeFullSet(b *testing.B) {
	snap, err := build(api.ClusterType, nil, testClusters(1000, 0), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	r := &sotwResp{snap: snap, all: true}
	b.Run("meshd", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			enc, _ := encodeSotw(r, "1")
			enc.data.Free()
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		out := &discovery.DiscoveryResponse{VersionInfo: snap.version, TypeUrl: snap.typeURL, Resources: snap.allAnys(), Nonce: "1"}
		for b.Loop() {
			if _, err := proto.Marshal(out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBuild is the per-group cost of a full push: encode 1,000
// clusters that all changed, or find that none did.
func BenchmarkBuild(b *testing.B) {
	old, _ := build(api.ClusterType, nil, testClusters(1000, 0), nil, clusterRefs)
	changed, same := testClusters(1000, 1), testClusters(1000, 0)
	b.Run("all changed", func(b *testing.B) {
		for b.Loop() {
			if _, err := build(api.ClusterType, old, changed, nil, clusterRefs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("none changed", func(b *testing.B) {
		for b.Loop() {
			if _, err := build(api.ClusterType, old, same, nil, clusterRefs); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestDecodeRequest(t *testing.T) {
	known := map[string]string{"a": "a", "b": "b"}
	tests := []struct {
		name   string
		req    *discovery.DiscoveryRequest
		decode bool // false: left to the proto codec
	}{
		{"ACK with names", &discovery.DiscoveryRequest{VersionInfo: "v1", ResourceNames: []string{"a", "b", "c"}, TypeUrl: api.EndpointType, ResponseNonce: "3"}, true},
		{"first request with node", &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~1.2.3.4~a.b~b.svc.cluster.local", UserAgentName: "envoy"}, TypeUrl: api.ClusterType}, true},
		{"NACK", &discovery.DiscoveryRequest{TypeUrl: api.ClusterType, ResponseNonce: "9", ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad"}}, true},
		{"resource locators", &discovery.DiscoveryRequest{TypeUrl: api.ClusterType, ResourceLocators: []*discovery.ResourceLocator{{Name: "x"}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := proto.Marshal(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			var got discovery.DiscoveryRequest
			if ok := decodeRequest(b, &got, known); ok != tt.decode {
				t.Fatalf("decoded=%v, want %v", ok, tt.decode)
			}
			if tt.decode && !proto.Equal(&got, tt.req) {
				t.Errorf("got %v\nwant %v", &got, tt.req)
			}
			// Through the codec, every case comes out equal.
			var viaCodec discovery.DiscoveryRequest
			if err := (codec{names: namesPtr(known)}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &viaCodec); err != nil || !proto.Equal(&viaCodec, tt.req) {
				t.Errorf("codec: %v %v", err, &viaCodec)
			}
		})
	}
	bad := protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "\xff\xfe")
	if decodeRequest(bad, &discovery.DiscoveryRequest{}, known) {
		t.Error("invalid UTF-8 must be left to the proto codec")
	}
}

func namesPtr(m map[string]string) *atomic.Pointer[map[string]string] {
	var p atomic.Pointer[map[string]string]
	p.Store(&m)
	return &p
}
