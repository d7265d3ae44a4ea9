package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/xds/api"
)

// TestHistoryProxyCounts runs `meshd config history` against a fake admin
// API serving galley's revision list and, unless xdsOff, /debug/syncz.
func TestHistoryProxyCounts(t *testing.T) {
	revisions := map[string]any{"current": 12, "revisions": []map[string]any{
		{"revision": 12, "time": time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), "reason": "files", "objects": 7, "updated": 1, "digest": "d12", "origins": []string{"mesh/a.yaml"}},
		{"revision": 11, "time": time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC), "reason": "files", "objects": 7, "added": 7, "digest": "d11"},
		{"revision": 10, "time": time.Date(2026, 1, 2, 2, 0, 0, 0, time.UTC), "reason": "files", "objects": 6, "added": 6, "digest": "d10"},
	}}
	on := func(id string, rev uint64) api.ProxyStatus {
		return api.ProxyStatus{ID: id, ConnID: id + "-1", Types: []api.TypeStatus{
			{TypeURL: api.ClusterType, State: api.Synced, RevisionSent: rev, RevisionAcked: rev},
			{TypeURL: api.ListenerType, State: api.Synced, RevisionSent: rev, RevisionAcked: rev}}}
	}
	mixed := on("mixed", 12)
	mixed.Types[1].RevisionAcked = 11
	statuses := []api.ProxyStatus{on("a", 12), on("b", 12), on("c", 11), mixed}

	tests := []struct {
		name   string
		xdsOff bool
		args   []string
		want   []string // lines, or JSON fragments, in order
		lacks  []string
	}{
		{name: "text", want: []string{"REVISION  PROXIES  TIME", "12 *      2        ", "11        1        ", "10        0        "}},
		{name: "json", args: []string{"-o", "json"}, want: []string{`"revision": 12`, `"proxies": 2`, `"revision": 11`, `"proxies": 1`, `"revision": 10`, `"proxies": 0`}},
		{name: "without the proxy status the column is left out", xdsOff: true, want: []string{"REVISION  TIME"}, lacks: []string{"PROXIES"}},
		{name: "json without the proxy status", xdsOff: true, args: []string{"-o", "json"}, want: []string{`"revision": 12`}, lacks: []string{"proxies"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.URL.Path == "/config/revisions":
					_ = json.NewEncoder(w).Encode(revisions)
				case r.URL.Path == "/debug/syncz" && !tt.xdsOff:
					_ = json.NewEncoder(w).Encode(statuses)
				default:
					http.NotFound(w, r)
				}
			}))
			defer srv.Close()
			out, errOut, code := run(t, nil, append([]string{"config", "history", "--admin", strings.TrimPrefix(srv.URL, "http://")}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			rest := out
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
			for _, l := range tt.lacks {
				if strings.Contains(out, l) {
					t.Errorf("output has %q:\n%s", l, out)
				}
			}
			if tt.args == nil {
				t.Logf("\n%s", out)
			}
		})
	}
}
