package csvsource_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/core/plugin/plugintest"
	"github.com/meshd/meshd/examples/plugins/csv-source/csvsource"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource/sourcetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sample = `# services of the shop
host,namespace,port,port_name,protocol,address,endpoint_port,labels,locality,weight,health,service_account
reviews.shop.svc.cluster.local,shop,9080,http,HTTP,10.0.0.11,9081,version=v1;app=reviews,eu-west/a/1,3,HEALTHY,reviews
reviews.shop.svc.cluster.local,shop,9080,http,HTTP,10.0.0.12,,version=v2,eu-west/b,,DRAINING,reviews
reviews.shop.svc.cluster.local,shop,9443,grpc-api,,10.0.0.11,,,,,,reviews
ratings.shop.svc.cluster.local,shop,9080,http,HTTP,10.0.1.1,,,,,UNHEALTHY,
`

func TestParse(t *testing.T) {
	svcs, err := csvsource.Parse(strings.NewReader(sample), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 || svcs[0].Hostname != "reviews.shop.svc.cluster.local" || svcs[1].Hostname != "ratings.shop.svc.cluster.local" {
		t.Fatalf("services %v", svcs)
	}
	r := svcs[0]
	if len(r.Ports) != 2 || r.Ports[1].Protocol != model.ProtocolGRPC || len(r.Endpoints) != 3 {
		t.Fatalf("reviews %+v", *r)
	}
	e := r.EndpointsFor(9080)
	if e[0].Port != 9081 || e[0].Labels["app"] != "reviews" || e[0].Locality.Subzone != "1" || e[0].Weight != 3 || e[0].ServiceAccount != "reviews" {
		t.Errorf("endpoint %+v", *e[0])
	}
	if e[1].Port != 9080 || e[1].Health != model.Draining {
		t.Errorf("endpoint %+v", *e[1])
	}
	// The same file again: the same pointers.
	again, err := csvsource.Parse(strings.NewReader(sample), map[model.Key]*model.Service{r.Key(): r, svcs[1].Key(): svcs[1]})
	if err != nil || again[0] != r || again[1] != svcs[1] {
		t.Fatalf("pointers not reused: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ csv, want string }{
		{"host,namespace,port\n", `column "address" is required`},
		{"host,namespace,port,address,colour\n", `unknown column "colour"`},
		{"host,namespace,port,address\na,ns,http,10.0.0.1\n", `line 2: port "http"`},
		{"host,namespace,port,address\na,ns,80,10.0.0.1\n\nb,ns,80,db.local\n", "line 4: address \"db.local\" is not an IP address"},
		{"host,namespace,port,address,health\na,ns,80,10.0.0.1,SICK\n", "health"},
		{"host,namespace,port,address,labels\na,ns,80,10.0.0.1,novalue\n", "labels"},
	} {
		if _, err := csvsource.Parse(strings.NewReader(tc.csv), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.csv, err, tc.want)
		}
	}
	// DNS resolution takes host names.
	svcs, err := csvsource.Parse(strings.NewReader("host,namespace,port,address,resolution\ndb.example.com,ns,5432,db1.example.com,DNS\n"), nil)
	if err != nil || svcs[0].Resolution != model.ResolutionDNS {
		t.Fatalf("%v %v", svcs, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestRun runs the source in process and behind the discovery shims: both
// follow the file, and both keep the last good state when the file breaks.
func TestRun(t *testing.T) {
	for _, path := range []string{"in process", "shims"} {
		t.Run(path, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "services.csv")
			writeFile(t, file, sample)
			cfg := csvsource.DefaultConfig()
			cfg.File, cfg.Debounce, cfg.PollInterval = file, 10*time.Millisecond, time.Second
			var src registry.Source = csvsource.New(&cfg, nil)
			if path == "shims" {
				src = plugintest.Dispense(t, pluginsource.Kind, pluginsource.Plugin(src)).(registry.Source)
			}
			sink := sourcetest.NewSink()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- src.Run(ctx, sink) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			first := sink.WaitFor(t, "the file's services", func(st registry.State) bool { return len(st.Services) == 2 })
			writeFile(t, file, sample+"details.shop.svc.cluster.local,shop,9080,http,HTTP,10.0.2.1,,,,,,\n")
			second := sink.WaitFor(t, "the added service", func(st registry.State) bool { return len(st.Services) == 3 })
			if second.Services[0] != first.Services[0] {
				t.Error("unchanged service got a new pointer")
			}
			_, n := sink.Last()
			writeFile(t, file, "host,namespace,port,address\nbroken,ns,0,10.0.0.1\n")
			time.Sleep(300 * time.Millisecond)
			if st, m := sink.Last(); m != n || len(st.Services) != 3 {
				t.Fatalf("a broken file changed the state: %d states, %d services", m, len(st.Services))
			}
			writeFile(t, file, sample)
			sink.WaitFor(t, "the fixed file", func(st registry.State) bool { return len(st.Services) == 2 })
		})
	}
}

func TestRunMissingFile(t *testing.T) {
	cfg := csvsource.DefaultConfig()
	cfg.File = filepath.Join(t.TempDir(), "nope.csv")
	if err := csvsource.New(&cfg, nil).Run(context.Background(), sourcetest.NewSink()); err == nil {
		t.Fatal("no error for a missing file")
	}
}
