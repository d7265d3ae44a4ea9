// Command stdout-sink is the example telemetry sink plugin: it prints each
// access-log record meshd's telemetry module hands it, one line per record,
// on its standard output, which meshd routes into its own log tagged with
// the plugin's name (stream=stdout). See docs/plugins.md.
//
//   - name: access-log
//     kind: sink
//     path: /usr/local/lib/meshd/stdout-sink
//     sha256: <sha256sum of the binary>
//     config:
//     format: text
//     sample: 10
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/meshd/meshd/modules/telemetry/api"
	"github.com/meshd/meshd/sdk"
)

var version = "0.1.0"

// Config is the plugin's config section.
type Config struct {
	Format string `json:"format" allowed:"json,text" doc:"json: one JSON object per record; text: one short line per record"`
	Sample int    `json:"sample" doc:"print one record in this many (1 prints all)"`
}

// Validate checks the config.
func (c *Config) Validate() error {
	if c.Sample < 1 {
		return errors.New("sample must be at least 1")
	}
	return nil
}

type sink struct {
	cfg Config
	out io.Writer

	mu   sync.Mutex
	seen uint64
}

// Export prints the records; the slice is not kept.
func (s *sink) Export(ctx context.Context, records []api.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := bufio.NewWriter(s.out)
	enc := json.NewEncoder(w)
	for i := range records {
		s.seen++
		if (s.seen-1)%uint64(s.cfg.Sample) != 0 {
			continue
		}
		r := &records[i]
		if s.cfg.Format == "json" {
			if err := enc.Encode(r); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintln(w, line(r))
	}
	return w.Flush()
}

func line(r *api.Record) string {
	if r.Kind == api.KindTCP {
		return fmt.Sprintf("%s tcp %s/%s -> %s %s sent=%d received=%d (%s)",
			r.Start.UTC().Format(time.RFC3339Nano), r.SourceNamespace, r.SourceWorkload, r.DestinationService,
			r.Duration, r.BytesSent, r.BytesReceived, r.Reporter)
	}
	return fmt.Sprintf("%s %s %s/%s -> %s %s %s%s %d %s (%s)",
		r.Start.UTC().Format(time.RFC3339Nano), r.Protocol, r.SourceNamespace, r.SourceWorkload, r.DestinationService,
		r.Method, r.Authority, r.Path, r.ResponseCode, r.Duration, r.Reporter)
}

func main() {
	s := &sink{cfg: Config{Format: "text", Sample: 1}}
	sdk.ServeSink(
		sdk.Info{Name: "stdout-sink", Version: version, Description: "prints access-log records on stdout"},
		s, sdk.WithConfig(&s.cfg),
		// os.Stdout is read here, after sdk.Serve took it over: what is
		// written to it reaches meshd's log.
		sdk.OnConfigure(func(context.Context, string) error { s.out = os.Stdout; return nil }),
	)
}
