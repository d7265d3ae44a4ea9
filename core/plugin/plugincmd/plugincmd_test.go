package plugincmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/core/plugin"
)

func TestList(t *testing.T) {
	now := time.Now()
	sts := []plugin.Status{
		{Name: "csv", Kind: "discovery", Plugin: "csv-source", Version: "0.1.0", State: plugin.StateUp, Restarts: 2, PID: 4242, Since: now.Add(-90 * time.Second)},
		{Name: "no-wildcards", Kind: "validator", State: plugin.StateDown, Restarts: 5, Since: now.Add(-3 * time.Second), LastError: "plugin process exited"},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/plugins" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(sts)
	}))
	defer srv.Close()

	var out bytes.Buffer
	cmd := NewPluginsCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"list", "--admin", srv.URL})
	err := cmd.Execute()
	var ee *ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(err.Error(), "1 of 2 plugins are not up") {
		t.Fatalf("err %v", err)
	}
	got := out.String()
	for _, want := range []string{"NAME", "csv-source", "0.1.0", "4242", "1m30s", "no-wildcards", "down", "no-wildcards: plugin process exited"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}

	sts = sts[:1]
	out.Reset()
	cmd = NewPluginsCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"list", "--admin", strings.TrimPrefix(srv.URL, "http://"), "-o", "json"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	var back []plugin.Status
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || len(back) != 1 || back[0].Name != "csv" {
		t.Fatalf("json %v: %s", err, out.String())
	}
}

func TestListErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	cmd := NewPluginsCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"list", "--admin", srv.URL})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "is the plugins module enabled in this meshd?") {
		t.Fatalf("err %v", err)
	}
	cmd = NewPluginsCommand()
	cmd.SetArgs([]string{"list", "--admin", "127.0.0.1:1", "--timeout", "1s"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no meshd admin API at http://127.0.0.1:1") {
		t.Fatalf("err %v", err)
	}
}
