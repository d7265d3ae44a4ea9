package api_test

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/xds/api"
)

func node(id string, md map[string]any) *corev3.Node {
	s, err := structpb.NewStruct(md)
	if err != nil {
		panic(err)
	}
	return &corev3.Node{Id: id, Metadata: s}
}

func TestParseNode(t *testing.T) {
	tests := []struct {
		name    string
		node    *corev3.Node
		want    api.Proxy // Node and Metadata are not compared
		wantErr bool
	}{
		{
			name: "istio sidecar",
			node: node("sidecar~10.0.0.1~reviews-1.default~default.svc.cluster.local", map[string]any{
				"NAMESPACE": "default", "SERVICE_ACCOUNT": "bookinfo-reviews", "CLUSTER_ID": "Kubernetes",
				"LABELS": map[string]any{"app": "reviews", "version": "v1"},
			}),
			want: api.Proxy{ID: "sidecar~10.0.0.1~reviews-1.default~default.svc.cluster.local", Type: api.Sidecar,
				IP: "10.0.0.1", IPs: []string{"10.0.0.1"}, Name: "reviews-1", Namespace: "default", DNSDomain: "default.svc.cluster.local",
				ServiceAccount: "bookinfo-reviews", ClusterID: "Kubernetes", Labels: map[string]string{"app": "reviews", "version": "v1"},
				Identity: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"},
		},
		{
			name: "gateway, namespace from the node ID",
			node: node("router~10.0.0.2~ingress-abc.istio-system~istio-system.svc.cluster.local", nil),
			want: api.Proxy{ID: "router~10.0.0.2~ingress-abc.istio-system~istio-system.svc.cluster.local", Type: api.Gateway,
				IP: "10.0.0.2", IPs: []string{"10.0.0.2"}, Name: "ingress-abc", Namespace: "istio-system", DNSDomain: "istio-system.svc.cluster.local"},
		},
		{
			name: "plain ID is proxyless",
			node: node("projects/1/nodes/client-7", map[string]any{"NAMESPACE": "shop", "INSTANCE_IPS": "10.1.1.1, 10.1.1.2"}),
			want: api.Proxy{ID: "projects/1/nodes/client-7", Type: api.Proxyless, Namespace: "shop", IP: "10.1.1.1", IPs: []string{"10.1.1.1", "10.1.1.2"}},
		},
		{
			name: "istio proxyless bootstrap: sidecar ID with GENERATOR=grpc",
			node: node("sidecar~10.0.0.3~client.default~default.svc.cluster.local", map[string]any{"GENERATOR": "grpc"}),
			want: api.Proxy{ID: "sidecar~10.0.0.3~client.default~default.svc.cluster.local", Type: api.Proxyless,
				IP: "10.0.0.3", IPs: []string{"10.0.0.3"}, Name: "client", Namespace: "default", DNSDomain: "default.svc.cluster.local"},
		},
		{
			name: "PROXY_TYPE overrides",
			node: node("vm-1", map[string]any{"PROXY_TYPE": "sidecar"}),
			want: api.Proxy{ID: "vm-1", Type: api.Sidecar},
		},
		{name: "no ID", node: &corev3.Node{}, wantErr: true},
		{name: "nil node", node: nil, wantErr: true},
		{name: "three parts", node: node("sidecar~10.0.0.1~x.y", nil), wantErr: true},
		{name: "unknown type", node: node("waypoint~10.0.0.1~x.y~y.svc", nil), wantErr: true},
		{name: "bad IP", node: node("sidecar~not-an-ip~x.y~y.svc", nil), wantErr: true},
		{name: "bad PROXY_TYPE", node: node("x", map[string]any{"PROXY_TYPE": "ztunnel"}), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := api.ParseNode(tt.node, "cluster.local")
			if tt.wantErr {
				if !errors.Is(err, api.ErrInvalidNode) {
					t.Fatalf("err %v, want ErrInvalidNode", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := *p
			got.Node, got.Metadata = nil, nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestWithVerifiedIdentity(t *testing.T) {
	p, err := api.ParseNode(node("sidecar~10.0.0.1~a.shop~shop.svc.cluster.local", map[string]any{"SERVICE_ACCOUNT": "cart"}), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id      string
		wantErr bool
	}{
		{"spiffe://cluster.local/ns/shop/sa/cart", false},
		{"spiffe://cluster.local/ns/other/sa/cart", true},
		{"spiffe://cluster.local/ns/shop/sa/payments", true},
		{"https://example.com", true},
	}
	for _, tt := range tests {
		q, err := p.WithVerifiedIdentity(tt.id)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err %v", tt.id, err)
			continue
		}
		if err == nil && (!q.IdentityVerified || q.Identity != tt.id || p.IdentityVerified) {
			t.Errorf("%s: %+v (original %+v)", tt.id, q, p)
		}
	}
}

func TestPushRequestMerge(t *testing.T) {
	eds := api.EndpointType
	tests := []struct {
		name string
		a, b api.PushRequest
		want api.PushRequest
	}{
		{"full wins", api.EndpointPush("e", "a"), api.FullPush("c"), api.PushRequest{Full: true, Reason: "e,c"}},
		{"names union, sorted, deduplicated", api.EndpointPush("e", "b", "a"), api.EndpointPush("e", "a", "c"),
			api.PushRequest{Updates: map[string][]string{eds: {"a", "b", "c"}}, Reason: "e"}},
		{"whole type absorbs names", api.PushRequest{Updates: map[string][]string{eds: nil}}, api.EndpointPush("e", "a"),
			api.PushRequest{Updates: map[string][]string{eds: nil}, Reason: "e"}},
		{"types kept apart", api.EndpointPush("", "a"), api.PushRequest{Updates: map[string][]string{api.SecretType: {"default"}}},
			api.PushRequest{Updates: map[string][]string{eds: {"a"}, api.SecretType: {"default"}}}},
		{"highest revision wins", api.PushRequest{Full: true, Reason: "config", Revision: 7}, api.PushRequest{Full: true, Reason: "config", Revision: 5},
			api.PushRequest{Full: true, Reason: "config", Revision: 7}},
		{"a push without a revision keeps the other's", api.EndpointPush("e", "a"), api.PushRequest{Full: true, Reason: "config", Revision: 3},
			api.PushRequest{Full: true, Reason: "e,config", Revision: 3}},
		{"revision-only push", api.PushRequest{Reason: "config", Revision: 4}, api.EndpointPush("e", "a"),
			api.PushRequest{Updates: map[string][]string{eds: {"a"}}, Reason: "config,e", Revision: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.a.Merge(tt.b)
			if got.Full != tt.want.Full || got.Reason != tt.want.Reason || got.Revision != tt.want.Revision || !maps.EqualFunc(got.Updates, tt.want.Updates, func(x, y []string) bool {
				return (x == nil) == (y == nil) && slices.Equal(x, y)
			}) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestConfigRevision(t *testing.T) {
	ts := func(state api.SyncState, acked uint64) api.TypeStatus {
		return api.TypeStatus{State: state, RevisionAcked: acked}
	}
	tests := []struct {
		name      string
		types     []api.TypeStatus
		low, high uint64
	}{
		{"nothing sent", []api.TypeStatus{ts(api.NotSent, 0)}, 0, 0},
		{"all on 12", []api.TypeStatus{ts(api.Synced, 12), ts(api.Synced, 12)}, 12, 12},
		{"one type behind", []api.TypeStatus{ts(api.Synced, 12), ts(api.Nacked, 11)}, 11, 12},
		{"a type not acknowledged yet", []api.TypeStatus{ts(api.Synced, 12), ts(api.Stale, 0)}, 0, 12},
		{"types never sent do not count", []api.TypeStatus{ts(api.NotSent, 0), ts(api.Synced, 3)}, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			low, high := api.ProxyStatus{Types: tt.types}.ConfigRevision()
			if low != tt.low || high != tt.high {
				t.Errorf("got %d..%d, want %d..%d", low, high, tt.low, tt.high)
			}
		})
	}
}

func TestShortType(t *testing.T) {
	for url, want := range map[string]string{api.ClusterType: "cds", api.EndpointType: "eds", api.ListenerType: "lds", api.RouteType: "rds", api.SecretType: "sds",
		"type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig": "envoy.config.core.v3.TypedExtensionConfig"} {
		if got := api.ShortType(url); got != want {
			t.Errorf("ShortType(%s) = %s, want %s", url, got, want)
		}
	}
}
