package statuscmd_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meshd/meshd/xds/api"
	"github.com/meshd/meshd/xds/statuscmd"
)

func TestStatusCommand(t *testing.T) {
	synced := api.ProxyStatus{ID: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", ConnID: "c1", Type: api.Sidecar, Identity: "spiffe://cluster.local/ns/ns/sa/a", IdentityVerified: true,
		Types: []api.TypeStatus{{TypeURL: api.ClusterType, State: api.Synced, RevisionSent: 12, RevisionAcked: 12}, {TypeURL: api.EndpointType, State: api.Stale, RevisionSent: 12, RevisionAcked: 11}}}
	onLatest := api.ProxyStatus{ID: "grpc-on", ConnID: "c3", Type: api.Proxyless,
		Types: []api.TypeStatus{{TypeURL: api.ClusterType, State: api.Synced, RevisionSent: 12, RevisionAcked: 12}}}
	nacked := api.ProxyStatus{ID: "grpc-client", ConnID: "c2", Type: api.Proxyless,
		Types: []api.TypeStatus{{TypeURL: api.ListenerType, State: api.Nacked, LastNack: &api.Nack{Version: "v2", Message: "listener \"svc\": bad\nthing", Resources: []string{"svc"}}}}}
	tests := []struct {
		name     string
		statuses []api.ProxyStatus
		args     []string
		current  uint64 // galley's accepted revision; 0: galley is off
		down     bool
		wantCode int
		want     []string
	}{
		{name: "all synced", statuses: []api.ProxyStatus{synced}, want: []string{"NAME", "SYNCED", "STALE", "spiffe://cluster.local/ns/ns/sa/a"}},
		{name: "one NACKED exits 1", statuses: []api.ProxyStatus{synced, nacked}, wantCode: 1,
			want: []string{"NACKED", `grpc-client LDS version v2: listener "svc": bad thing (resources: svc)`}},
		{name: "filter by ID", statuses: []api.ProxyStatus{synced, nacked}, args: []string{"sidecar"}, want: []string{"SYNCED"}},
		{name: "json", statuses: []api.ProxyStatus{synced}, args: []string{"-o", "json"}, want: []string{`"connId": "c1"`, `"revisionAcked": 11`, `"revisionSent": 12`}},
		{name: "revision column and summary against galley's revision", statuses: []api.ProxyStatus{synced, onLatest}, current: 13,
			want: []string{"REVISION", "12 (EDS 11)", "2 proxies, 0 on the latest revision 13, 2 behind, 0 NACKed"}},
		{name: "without galley the latest is the highest revision sent", statuses: []api.ProxyStatus{synced, onLatest},
			want: []string{"2 proxies, 1 on the latest revision 12, 1 behind, 0 NACKed"}},
		{name: "meshd down exits 2", down: true, wantCode: 2},
		{name: "nobody connected", want: []string{"no proxies connected"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.URL.Path == "/debug/syncz":
					_ = json.NewEncoder(w).Encode(tt.statuses)
				case r.URL.Path == "/config/revisions" && tt.current > 0:
					_ = json.NewEncoder(w).Encode(map[string]any{"current": tt.current})
				default:
					http.NotFound(w, r)
				}
			}))
			addr := strings.TrimPrefix(srv.URL, "http://")
			if tt.down {
				srv.Close()
			} else {
				defer srv.Close()
			}
			var out bytes.Buffer
			cmd := statuscmd.NewStatusCommand()
			cmd.SetOut(&out)
			cmd.SetArgs(append([]string{"--admin", addr}, tt.args...))
			err := cmd.Execute()
			code := 0
			var ee *statuscmd.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("error without exit code: %v", err)
			}
			if code != tt.wantCode {
				t.Errorf("exit code %d (%v), want %d", code, err, tt.wantCode)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if tt.name == "filter by ID" && strings.Contains(out.String(), "grpc-client") {
				t.Errorf("filter kept grpc-client:\n%s", out.String())
			}
		})
	}
}
