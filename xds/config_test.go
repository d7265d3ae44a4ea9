package xds_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/core/config"
	"github.com/meshd/meshd/xds"
)

// TestConfig decodes modules.xds sections the way the host does: strictly,
// over Default().
func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]any
		check   func(*testing.T, *xds.Config)
		wantErr string
	}{
		{name: "defaults", in: nil, check: func(t *testing.T, c *xds.Config) {
			if c.Address != "127.0.0.1:15010" || c.TLSAddress != "127.0.0.1:15012" || c.Debounce.Quiet != 50*time.Millisecond {
				t.Errorf("defaults %+v", c)
			}
		}},
		{name: "durations and nesting", in: map[string]any{"debounce": map[string]any{"quiet": "20ms", "max": "2s"}, "keepalive": map[string]any{"time": "1m"}},
			check: func(t *testing.T, c *xds.Config) {
				if c.Debounce.Quiet != 20*time.Millisecond || c.Debounce.Max != 2*time.Second || c.Keepalive.Time != time.Minute || c.Keepalive.Timeout != 10*time.Second {
					t.Errorf("decoded %+v", c)
				}
			}},
		{name: "unknown key", in: map[string]any{"debounce": map[string]any{"quite": "1s"}}, wantErr: "modules.xds.debounce.quite"},
		{name: "quiet above max", in: map[string]any{"debounce": map[string]any{"quiet": "2s", "max": "1s"}}, wantErr: "quiet"},
		{name: "zero streams", in: map[string]any{"maxStreams": 0}, wantErr: "maxStreams"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := xds.Default()
			err := config.Decode(tt.in, &c, "modules.xds")
			if err == nil {
				err = c.Validate()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, &c)
		})
	}
}
