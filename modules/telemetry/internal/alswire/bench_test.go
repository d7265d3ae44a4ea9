package alswire

import (
	"math/rand/v2"
	"testing"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/proto"
)

// BenchmarkDecodeHTTP decodes a message of random HTTP entries with this
// package, BenchmarkDecodeProtobuf with protobuf-go's generated code.
func BenchmarkDecodeHTTP(b *testing.B) {
	msg, n := benchMessage(b)
	var m Message
	var h HTTPEntry
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Parse(msg); err != nil {
			b.Fatal(err)
		}
		for {
			raw, ok, err := m.Next()
			if err != nil || !ok {
				break
			}
			if err := h.Decode(raw); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
}

func BenchmarkDecodeProtobuf(b *testing.B) {
	msg, n := benchMessage(b)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		var m alsv3.StreamAccessLogsMessage
		if err := proto.Unmarshal(msg, &m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
}

func benchMessage(b *testing.B) ([]byte, int) {
	g := gen{rand.New(rand.NewPCG(7, 8))}
	l := &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{}
	for range 32 {
		l.LogEntry = append(l.LogEntry, g.httpEntry())
	}
	return mustMarshal(b, &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: l}}), 32
}
