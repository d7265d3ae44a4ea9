package plugins_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/core/plugin"
	"github.com/meshd/meshd/examples/plugins/csv-source/csvsource"
	"github.com/meshd/meshd/modules/pilot/registry"
	"github.com/meshd/meshd/modules/pilot/registry/pluginsource"
)

// benchServices x benchEndpoints endpoints: 10,000.
const (
	benchServices  = 100
	benchEndpoints = 100
)

// csvFile renders the benchmark's CSV with every endpoint's weight set to
// w, so that alternating w changes every endpoint of every service.
func csvFile(w int) []byte {
	var b strings.Builder
	b.WriteString("host,namespace,port,address,labels,locality,weight\n")
	for s := range benchServices {
		for e := range benchEndpoints {
			fmt.Fprintf(&b, "svc-%d.bench.svc.cluster.local,bench,8080,10.%d.%d.%d,app=svc-%d;version=v%d,us-east/us-east-1a,%d\n",
				s, s/250, s%250, e+1, s, e%3, w)
		}
	}
	return []byte(b.String())
}

// waitSink signals each state and remembers the last one.
type waitSink struct {
	mu   sync.Mutex
	last registry.State
	ch   chan struct{}
}

func (s *waitSink) Update(st registry.State) {
	s.mu.Lock()
	s.last = st
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

// waitWeight waits for a state whose endpoints all carry weight w.
func (s *waitSink) waitWeight(b *testing.B, w uint32) {
	deadline := time.After(30 * time.Second)
	for {
		s.mu.Lock()
		st := s.last
		s.mu.Unlock()
		if n := len(st.Services); n == benchServices {
			last := st.Services[n-1]
			if len(last.Endpoints) == benchEndpoints && last.Endpoints[0].Weight == w && st.Services[0].Endpoints[0].Weight == w {
				return
			}
		}
		select {
		case <-s.ch:
		case <-deadline:
			b.Fatalf("no state with weight %d", w)
		}
	}
}

// BenchmarkDiscovery10k pushes 10,000 endpoints (100 services of 100) from
// the CSV source, in process and as the csv-source plugin, in one run. One
// op is: the file is replaced with every endpoint changed, the source reads
// it, and the whole new state reaches the sink (through the plugin
// boundary, for the plugin: chunked gRPC over mTLS, checked and finalized
// again on the host side).
func BenchmarkDiscovery10k(b *testing.B) {
	files := [2][]byte{csvFile(1), csvFile(2)}
	// run measures ops on src; pid, when not 0, is the plugin process,
	// whose CPU time is added to this process's for the cpu-ms/op metric.
	run := func(b *testing.B, src registry.Source, file string, pid int) {
		sink := &waitSink{ch: make(chan struct{}, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx, sink) }()
		defer func() {
			cancel()
			<-done
		}()
		sink.waitWeight(b, 1)
		b.ReportAllocs()
		host0, plugin0 := cpuTime(os.Getpid()), cpuTime(pid)
		b.ResetTimer()
		for i := range b.N {
			w := (i+1)%2 + 1
			tmp := file + ".tmp"
			if err := os.WriteFile(tmp, files[w-1], 0o600); err != nil {
				b.Fatal(err)
			}
			if err := os.Rename(tmp, file); err != nil {
				b.Fatal(err)
			}
			sink.waitWeight(b, uint32(w))
		}
		b.StopTimer()
		host, plug := cpuTime(os.Getpid())-host0, cpuTime(pid)-plugin0
		perOp := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
		b.ReportMetric(perOp(host+plug), "cpu-ms/op")
		if pid != 0 {
			b.ReportMetric(perOp(plug), "plugin-cpu-ms/op")
		}
	}
	newFile := func(b *testing.B) string {
		file := filepath.Join(b.TempDir(), "services.csv")
		if err := os.WriteFile(file, files[0], 0o600); err != nil {
			b.Fatal(err)
		}
		return file
	}

	b.Run("in-process", func(b *testing.B) {
		file := newFile(b)
		cfg := csvsource.Config{File: file}
		run(b, csvsource.New(&cfg, nil), file, 0)
	})

	b.Run("plugin", func(b *testing.B) {
		file := newFile(b)
		pc := declare(b, "csv", plugin.KindDiscovery, "csv-source", map[string]any{"file": file, "debounce": "0s", "pollInterval": "0s"})
		cfg := plugin.Default()
		cfg.Plugins = []plugin.PluginConfig{pc}
		m := new(plugin.Module)
		if err := m.Setup(plugin.Options{Config: cfg}); err != nil {
			b.Fatal(err)
		}
		defer m.Cleanup()
		in := m.Instances(plugin.KindDiscovery)[0]
		run(b, pluginsource.New(in), file, in.Status().PID)
	})
}

// cpuTime is the user and system CPU time pid has used so far, from
// /proc/<pid>/stat (clock ticks of 10 ms); 0 for pid 0.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
