package pluginsource

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin/plugintest"
	discoveryv1 "github.com/meshd/meshd/core/plugin/proto/discovery/v1"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource/sourcetest"
)

func TestChunking(t *testing.T) {
	var services []*model.Service
	for i := range 5 {
		services = append(services, sourcetest.Service(fmt.Sprintf("s%d.example.com", i), "ns", 400))
	}
	services = append(services, sourcetest.Service("big.example.com", "ns", 3*chunkEndpoints+17), sourcetest.Service("none.example.com", "ns", 0))
	var e encoder
	chunks := e.chunks(7, services)
	// sourcetest.Service's endpoint attributes repeat every 12 endpoints:
	// 400 endpoints share 12 profiles.
	if n := len(chunks[0].Services[0].Profiles); n != 12 {
		t.Errorf("%d profiles for one service, want 12", n)
	}
	for i, c := range chunks {
		n := 0
		for _, s := range c.Services {
			n += len(s.Endpoints)
		}
		if n > chunkEndpoints {
			t.Errorf("chunk %d has %d endpoints", i, n)
		}
		if c.Generation != 7 || c.Last != (i == len(chunks)-1) {
			t.Errorf("chunk %d: generation %d last %v", i, c.Generation, c.Last)
		}
	}
	d := &decoder{source: "p"}
	var got []*model.Service
	for i, c := range chunks {
		s, problems, done, err := d.add(c)
		if err != nil || len(problems) > 0 || done != (i == len(chunks)-1) {
			t.Fatalf("chunk %d: %v %v done=%v", i, err, problems, done)
		}
		got = s
	}
	if diff := sourcetest.Equal(services, got); diff != "" {
		t.Fatal(diff)
	}
	// The second time, unchanged services are not converted again on the
	// plugin side, and keep their pointers on the host side.
	again := e.chunks(8, services)
	if again[0].Services[0] != chunks[0].Services[0] {
		t.Error("encoder converted an unchanged service again")
	}
	var got2 []*model.Service
	for _, c := range again {
		got2, _, _, _ = d.add(c)
	}
	for i := range got {
		if got[i] != got2[i] {
			t.Errorf("service %d: new pointer for an unchanged service", i)
		}
	}
}

func TestDecoderRejects(t *testing.T) {
	ok := func() *discoveryv1.Service {
		return &discoveryv1.Service{Hostname: "a.example.com", Namespace: "ns", Ports: []*discoveryv1.Port{{Name: "http", Number: 80}},
			Endpoints: []*discoveryv1.Endpoint{{Address: "10.0.0.1", ServicePort: 80}}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*discoveryv1.Service)
		want string
	}{
		{"no hostname", func(s *discoveryv1.Service) { s.Hostname = "" }, "not a host name"},
		{"no namespace", func(s *discoveryv1.Service) { s.Namespace = "" }, "namespace"},
		{"no ports", func(s *discoveryv1.Service) { s.Ports = nil; s.Endpoints = nil }, "no ports"},
		{"port range", func(s *discoveryv1.Service) { s.Ports[0].Number = 70000 }, "out of range"},
		{"dup port", func(s *discoveryv1.Service) { s.Ports = append(s.Ports, &discoveryv1.Port{Number: 80}) }, "declared twice"},
		{"unknown service port", func(s *discoveryv1.Service) { s.Endpoints[0].ServicePort = 81 }, "does not have"},
		{"static needs IP", func(s *discoveryv1.Service) { s.Endpoints[0].Address = "db.local" }, "not an IP address"},
		{"bad VIP", func(s *discoveryv1.Service) { s.Addresses = []string{"nope"} }, "not an IP address or CIDR"},
		{"resolution", func(s *discoveryv1.Service) { s.Resolution = 9 }, "unknown resolution"},
		{"health", func(s *discoveryv1.Service) { s.Endpoints[0].Health = 7 }, "unknown health"},
		{"labels", func(s *discoveryv1.Service) {
			s.Labels = map[string]string{}
			for i := range maxLabels + 1 {
				s.Labels[fmt.Sprint(i)] = "x"
			}
		}, "labels"},
		{"long string", func(s *discoveryv1.Service) { s.Endpoints[0].Workload = strings.Repeat("w", maxString+1) }, "longer than"},
		{"missing profile", func(s *discoveryv1.Service) { s.Endpoints[0].Profile = 2 }, "profile 2 of 0"},
		{"profile health", func(s *discoveryv1.Service) {
			s.Profiles = []*discoveryv1.EndpointProfile{{Health: 5}}
			s.Endpoints[0].Profile = 1
		}, "profile 1: unknown health"},
		{"profile string", func(s *discoveryv1.Service) {
			s.Profiles = []*discoveryv1.EndpointProfile{{ServiceAccount: strings.Repeat("s", maxString+1)}}
		}, "profile 1: endpoint field is longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := ok()
			bad.Hostname = "bad.example.com"
			tc.mod(bad)
			d := &decoder{source: "p"}
			got, problems, done, err := d.add(&discoveryv1.StateChunk{Generation: 1, Last: true, Services: []*discoveryv1.Service{ok(), bad}})
			if err != nil || !done {
				t.Fatalf("err %v done %v", err, done)
			}
			if len(got) != 1 || got[0].Hostname != "a.example.com" || got[0].Source != "p" {
				t.Fatalf("kept %d services", len(got))
			}
			if len(problems) != 1 || !strings.Contains(problems[0].Error(), tc.want) {
				t.Fatalf("problems %v, want %q", problems, tc.want)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		s := ok()
		s.Ports[0].TargetPort = 8080
		s.Ports[0].Protocol = ""
		s.Ports[0].Name = "http-web"
		d := &decoder{source: "p"}
		got, _, _, _ := d.add(&discoveryv1.StateChunk{Last: true, Services: []*discoveryv1.Service{s}})
		if got[0].Endpoints[0].Port != 8080 || got[0].Ports[0].Protocol != model.ProtocolHTTP {
			t.Fatalf("endpoint port %d protocol %s", got[0].Endpoints[0].Port, got[0].Ports[0].Protocol)
		}
	})
	t.Run("duplicate and orphan continuation", func(t *testing.T) {
		d := &decoder{source: "p"}
		got, problems, _, _ := d.add(&discoveryv1.StateChunk{Last: true, Services: []*discoveryv1.Service{
			ok(), ok(), {Hostname: "x.example.com", Namespace: "ns", Continued: true},
		}})
		if len(got) != 1 || len(problems) != 2 {
			t.Fatalf("got %d services, problems %v", len(got), problems)
		}
	})
	t.Run("mixed generations", func(t *testing.T) {
		d := &decoder{source: "p"}
		if _, _, _, err := d.add(&discoveryv1.StateChunk{Generation: 1, Services: []*discoveryv1.Service{ok()}}); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := d.add(&discoveryv1.StateChunk{Generation: 2, Last: true}); err == nil {
			t.Fatal("no error for a chunk of another state")
		}
	})
}

// rawServer sends whatever chunks a test gives it.
type rawServer struct {
	discoveryv1.UnimplementedDiscoveryServer
	chunks []*discoveryv1.StateChunk
}

func (r *rawServer) Watch(_ *discoveryv1.WatchRequest, s discoveryv1.Discovery_WatchServer) error {
	for _, c := range r.chunks {
		if err := s.Send(c); err != nil {
			return err
		}
	}
	<-s.Context().Done()
	return nil
}

type recordSink struct {
	mu  sync.Mutex
	sts []registry.State
}

func (r *recordSink) Update(st registry.State) {
	r.mu.Lock()
	r.sts = append(r.sts, st)
	r.mu.Unlock()
}

func TestClientCutsOffOversizedState(t *testing.T) {
	// A plugin that never ends its state: the host stops reading at the
	// limit instead of buffering forever.
	defer func(n int) { maxEndpoints = n }(maxEndpoints)
	maxEndpoints = 20 * chunkEndpoints
	big := &discoveryv1.Service{Hostname: "a.example.com", Namespace: "ns"}
	for range chunkEndpoints {
		big.Endpoints = append(big.Endpoints, &discoveryv1.Endpoint{Address: "10.0.0.1"})
	}
	srv := &rawServer{}
	for range maxEndpoints/chunkEndpoints + 1 {
		srv.chunks = append(srv.chunks, &discoveryv1.StateChunk{Generation: 1, Services: []*discoveryv1.Service{big}})
	}
	cc := plugintest.Connect(t, Kind, func(s *grpc.Server) error { discoveryv1.RegisterDiscoveryServer(s, srv); return nil })
	src := NewClient(cc, "p", slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := src.Run(ctx, &recordSink{})
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Run: %v", err)
	}
}

func TestClientDropsInvalidServices(t *testing.T) {
	srv := &rawServer{chunks: []*discoveryv1.StateChunk{{Generation: 1, Last: true, Services: []*discoveryv1.Service{
		{Hostname: "good.example.com", Namespace: "ns", Ports: []*discoveryv1.Port{{Number: 80}}},
		{Hostname: "", Namespace: "ns"},
	}}}}
	cc := plugintest.Connect(t, Kind, func(s *grpc.Server) error { discoveryv1.RegisterDiscoveryServer(s, srv); return nil })
	src := NewClient(cc, "p", nil)
	sink := &recordSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, sink) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		sink.mu.Lock()
		n := len(sink.sts)
		sink.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no state")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(sink.sts[0].Services) != 1 || sink.sts[0].Services[0].Hostname != "good.example.com" {
		t.Fatalf("state %+v", sink.sts[0])
	}
}
