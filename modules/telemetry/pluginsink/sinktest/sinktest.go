// Package sinktest is the conformance suite of the sink plugin kind: what
// telemetry must see from any api.Sink, checked the same way against a sink
// called in process (telemetry's own file sink) and against the same sink
// behind the plugin shims (pluginsink, over go-plugin's TestPluginGRPCConn).
package sinktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/modules/telemetry/filesink"
)

// Records returns n records with every field set.
func Records(n int) []api.Record {
	start := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	out := make([]api.Record, n)
	for i := range out {
		r := api.Record{
			Kind: api.KindHTTP, Start: start.Add(time.Duration(i) * time.Millisecond), Reporter: "destination",
			Proxy:          fmt.Sprintf("sidecar~10.0.0.%d~reviews-v1.shop~shop.svc.cluster.local", i%250),
			SourceWorkload: "productpage-v1", SourceNamespace: "shop", SourcePrincipal: "spiffe://cluster.local/ns/shop/sa/productpage",
			DestinationService: "reviews.shop.svc.cluster.local", DestinationWorkload: "reviews-v1", DestinationNamespace: "shop",
			ConnectionSecurityPolicy: "mutual_tls",
			Protocol:                 "HTTP/2", Method: "GET", Authority: "reviews:9080", Path: fmt.Sprintf("/reviews/%d", i),
			UserAgent: "curl/8", RequestID: fmt.Sprintf("req-%d", i), ResponseCode: 200 + uint32(i%3)*100, GRPCStatus: "0",
			ResponseFlags: "-", Duration: time.Duration(i) * time.Microsecond, BytesReceived: uint64(i), BytesSent: uint64(2 * i),
			UpstreamCluster: "inbound|9080||", UpstreamHost: "10.0.0.1:9080", DownstreamPeer: "10.0.0.2:51000",
		}
		if i%4 == 3 {
			r = api.Record{Kind: api.KindTCP, Start: r.Start, Reporter: "source", Proxy: r.Proxy,
				SourceWorkload: "unknown", SourceNamespace: "unknown", SourcePrincipal: "unknown",
				DestinationService: "db.shop.svc.cluster.local", DestinationWorkload: "db", DestinationNamespace: "shop",
				ConnectionSecurityPolicy: "none", BytesReceived: 10, BytesSent: 20, Duration: time.Second}
		}
		out[i] = r
	}
	return out
}

// Wrap turns a sink into the sink under test: the identity for the
// in-process path, the shims for the plugin path.
type Wrap func(t *testing.T, s api.Sink) api.Sink

// SinkFunc adapts a function to api.Sink.
type SinkFunc func(ctx context.Context, records []api.Record) error

// Export implements api.Sink.
func (f SinkFunc) Export(ctx context.Context, records []api.Record) error { return f(ctx, records) }

func fileSink(t *testing.T, path string) *filesink.Sink {
	t.Helper()
	s, err := filesink.New(filesink.Options{Path: path, MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Run runs the suite.
func Run(t *testing.T, wrap Wrap) {
	t.Run("file sink writes the same bytes", func(t *testing.T) {
		dir := t.TempDir()
		direct, wrapped := fileSink(t, filepath.Join(dir, "direct.jsonl")), fileSink(t, filepath.Join(dir, "wrapped.jsonl"))
		w := wrap(t, wrapped)
		for _, batch := range [][]api.Record{Records(3), Records(2500), Records(1)} {
			if err := direct.Export(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
			if err := w.Export(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
		}
		_ = direct.Close()
		_ = wrapped.Close()
		a, _ := os.ReadFile(filepath.Join(dir, "direct.jsonl"))
		b, _ := os.ReadFile(filepath.Join(dir, "wrapped.jsonl"))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Fatalf("files differ: %d and %d bytes", len(a), len(b))
		}
	})

	t.Run("records arrive whole and in order", func(t *testing.T) {
		var mu sync.Mutex
		var got []api.Record
		spy := SinkFunc(func(_ context.Context, rs []api.Record) error {
			mu.Lock()
			got = append(got, rs...) // copies: the slice is reused after Export
			mu.Unlock()
			return nil
		})
		want := Records(2345)
		if err := wrap(t, spy).Export(context.Background(), want); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != len(want) {
			t.Fatalf("%d records, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("record %d:\n got  %+v\n want %+v", i, got[i], want[i])
			}
		}
	})

	t.Run("errors reach telemetry", func(t *testing.T) {
		s := SinkFunc(func(context.Context, []api.Record) error { return errors.New("collector refused") })
		if err := wrap(t, s).Export(context.Background(), Records(1)); err == nil || !strings.Contains(err.Error(), "collector refused") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("deadline is honoured", func(t *testing.T) {
		s := SinkFunc(func(ctx context.Context, _ []api.Record) error { <-ctx.Done(); return ctx.Err() })
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := wrap(t, s).Export(ctx, Records(1)); err == nil {
			t.Fatal("no error past the deadline")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("returned after %s", d)
		}
	})

	t.Run("empty batch", func(t *testing.T) {
		if err := wrap(t, SinkFunc(func(context.Context, []api.Record) error { return nil })).Export(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
	})
}
