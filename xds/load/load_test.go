package load_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshd/meshd/xds/load"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSmoke runs every scenario at toy size, both servers, in process: it
// checks the driver works, not how fast anything is (the real runs are
// `meshload`, behind `task bench`).
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and proxies")
	}
	results, err := load.Run(context.Background(), load.Options{
		InProcess:            true,
		Services:             20,
		FullPushProxies:      5,
		Pushes:               2,
		DeltaProxies:         5,
		EDSServices:          []int{20, 40},
		Changes:              2,
		BigService:           10,
		StormBatches:         []int{4, 4},
		StormAtOnce:          6,
		BaselineMaxServices:  20,
		BaselineDeltaProxies: 5,
		Timeout:              20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	load.Markdown(&md, results)
	t.Logf("\n%s", md.String())
	if len(results) != 10 {
		t.Errorf("%d results, want 10", len(results))
	}
	for _, r := range results {
		if strings.HasPrefix(r.Error, "skipped") {
			continue
		}
		if r.Error != "" || r.Ops == 0 {
			t.Errorf("%s %s %d: ops %d, error %q", r.Scenario, r.Impl, r.Services, r.Ops, r.Error)
		}
	}
	if !strings.Contains(md.String(), "baseline over meshd") {
		t.Error("no baseline ratio table")
	}
}
