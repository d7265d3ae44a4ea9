package statuscmd_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/statuscmd"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// golden compares got with testdata/name.golden, or rewrites it with
// -update or UPDATE_GOLDEN=1.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update || os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs; got:\n%s\nwant:\n%s", path, got, want)
	}
}

// ts is a type's status acknowledging revision acked after being sent sent.
func ts(typeURL string, state api.SyncState, sent, acked uint64) api.TypeStatus {
	return api.TypeStatus{TypeURL: typeURL, State: state, RevisionSent: sent, RevisionAcked: acked}
}

func proxy(id string, types ...api.TypeStatus) api.ProxyStatus {
	return api.ProxyStatus{ID: id, ConnID: id + "-1", Type: api.Proxyless, Types: types}
}

func TestTable(t *testing.T) {
	onLatest := proxy("grpc-a",
		ts(api.ClusterType, api.Synced, 12, 12), ts(api.EndpointType, api.Synced, 12, 12),
		ts(api.ListenerType, api.Synced, 12, 12), ts(api.RouteType, api.Synced, 12, 12))
	behind := proxy("grpc-b",
		ts(api.ClusterType, api.Synced, 12, 12), ts(api.EndpointType, api.Stale, 12, 0),
		ts(api.ListenerType, api.Stale, 12, 11), ts(api.SecretType, api.NotSent, 0, 0))
	rejected := proxy("grpc-c",
		ts(api.ClusterType, api.Synced, 12, 12), ts(api.ListenerType, api.Nacked, 12, 11))
	rejected.Types[1].LastNack = &api.Nack{Version: "v12", Message: "listener \"svc\": bad"}
	noRevision := proxy("grpc-d", ts(api.ClusterType, api.Synced, 0, 0))
	oldRevision := proxy("grpc-e", ts(api.ClusterType, api.Synced, 9, 9), ts(api.ListenerType, api.Synced, 9, 9))
	// Two streams of one proxy: on 12 only when both are.
	split1 := api.ProxyStatus{ID: "grpc-f", ConnID: "grpc-f-1", Type: api.Proxyless, Types: []api.TypeStatus{ts(api.ClusterType, api.Synced, 12, 12)}}
	split2 := api.ProxyStatus{ID: "grpc-f", ConnID: "grpc-f-2", Type: api.Proxyless, Types: []api.TypeStatus{ts(api.ClusterType, api.Stale, 12, 11)}}

	tests := []struct {
		name     string
		statuses []api.ProxyStatus
		latest   uint64
	}{
		{"all_on_latest", []api.ProxyStatus{onLatest}, 12},
		{"mixed", []api.ProxyStatus{onLatest, behind, rejected, oldRevision, split1, split2}, 12},
		{"no_revision_known", []api.ProxyStatus{noRevision}, 0},
		{"no_proxies", nil, 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := statuscmd.Table(&out, tt.statuses, tt.latest); err != nil {
				t.Fatal(err)
			}
			golden(t, "table_"+tt.name, out.Bytes())
		})
	}
}

func TestSummarize(t *testing.T) {
	on := proxy("a", ts(api.ClusterType, api.Synced, 12, 12))
	old := proxy("b", ts(api.ClusterType, api.Synced, 11, 11))
	stale := proxy("c", ts(api.ClusterType, api.Stale, 12, 0))
	nacked := proxy("d", ts(api.ClusterType, api.Nacked, 12, 11))
	tests := []struct {
		name     string
		statuses []api.ProxyStatus
		latest   uint64
		want     string
	}{
		{"one on latest", []api.ProxyStatus{on}, 12, "1 proxy, 1 on the latest revision 12, 0 behind, 0 NACKed"},
		{"each kind", []api.ProxyStatus{on, old, stale, nacked}, 12, "4 proxies, 1 on the latest revision 12, 2 behind, 1 NACKed"},
		{"latest unknown", []api.ProxyStatus{on, nacked}, 0, "2 proxies, 1 NACKed (no config revision known)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statuscmd.Summarize(tt.statuses, tt.latest).String(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestProxiesOn(t *testing.T) {
	statuses := []api.ProxyStatus{
		proxy("a", ts(api.ClusterType, api.Synced, 12, 12), ts(api.ListenerType, api.Synced, 12, 12)),
		proxy("b", ts(api.ClusterType, api.Synced, 12, 12), ts(api.ListenerType, api.Nacked, 12, 11)),
		proxy("c", ts(api.ClusterType, api.Synced, 11, 11)),
		proxy("d", ts(api.ClusterType, api.Stale, 1, 0)),
		{ID: "e", ConnID: "e-1", Types: []api.TypeStatus{ts(api.ClusterType, api.Synced, 12, 12)}},
		{ID: "e", ConnID: "e-2", Types: []api.TypeStatus{ts(api.ClusterType, api.Synced, 12, 12)}},
	}
	got := statuscmd.ProxiesOn(statuses)
	want := map[uint64]int{12: 2, 11: 1}
	if len(got) != len(want) || got[12] != want[12] || got[11] != want[11] {
		t.Errorf("got %v, want %v", got, want)
	}
}
