// Command meshload is meshd's xDS load driver. It starts an xDS server in a
// child process (meshd's, and a baseline on go-control-plane's
// SnapshotCache with one snapshot per node), connects thousands of
// simulated proxies over loopback that acknowledge every response, and
// reports wall time, the server's CPU seconds (getrusage), bytes on the
// wire, RSS and Go heap after GC. See docs/benchmarks.md.
//
//	meshload                                # every scenario, both servers (several minutes)
//	meshload -scenarios full-push -impls meshd
//	meshload -json results.json -markdown results.md
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/xds/load"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		os.Exit(child(os.Args[2:]))
	}
	os.Exit(driver(os.Args[1:]))
}

func child(args []string) int {
	fs := flag.NewFlagSet("child", flag.ExitOnError)
	var o load.ChildOptions
	fs.StringVar(&o.Impl, "impl", load.ImplMeshd, "server: meshd or baseline")
	fs.IntVar(&o.Services, "services", 1000, "services in the synthetic mesh")
	fs.IntVar(&o.Big, "big", 100, "endpoints of service 0")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// MESHLOAD_CPUPROFILE profiles the server process, for finding where
	// its CPU goes.
	if path := os.Getenv("MESHLOAD_CPUPROFILE"); path != "" {
		f, err := os.Create(path + "." + o.Impl)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if err := load.RunChild(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "meshload child:", err)
		return 1
	}
	return 0
}

func driver(args []string) int {
	fs := flag.NewFlagSet("meshload", flag.ExitOnError)
	var o load.Options
	var impls, scenarios, eds, batches, jsonOut, mdOut string
	fs.StringVar(&impls, "impls", "meshd,baseline", "servers to measure: meshd, baseline")
	fs.StringVar(&scenarios, "scenarios", "full-push,eds-delta,storm", "scenarios: full-push, eds-delta, storm")
	fs.IntVar(&o.Services, "services", 1000, "services (full-push, storm)")
	fs.IntVar(&o.FullPushProxies, "full-push-proxies", 1000, "proxies in full-push")
	fs.IntVar(&o.Pushes, "pushes", 3, "pushes measured in full-push")
	fs.IntVar(&o.DeltaProxies, "delta-proxies", 2000, "proxies in eds-delta")
	fs.StringVar(&eds, "eds-services", "1000,10000", "mesh sizes for eds-delta")
	fs.IntVar(&o.Changes, "changes", 20, "endpoint changes measured in eds-delta")
	fs.IntVar(&o.BigService, "big", 100, "endpoints of the changing service")
	fs.StringVar(&batches, "storm-batches", "1000,1000", "storm: proxies connecting at once, batch after batch, in one server (memory slope)")
	fs.IntVar(&o.StormAtOnce, "storm-at-once", 2000, "storm: proxies connecting at once in a fresh server (-1: skip)")
	fs.BoolVar(&o.StormDelta, "storm-delta", false, "storm proxies speak delta xDS instead of state of the world")
	fs.IntVar(&o.BaselineMaxServices, "baseline-max-services", 1000, "skip baseline eds-delta above this size")
	fs.IntVar(&o.BaselineChanges, "baseline-changes", 3, "endpoint changes measured for the baseline")
	fs.IntVar(&o.BaselineDeltaProxies, "baseline-delta-proxies", 400, "proxies in the baseline's eds-delta (it costs ~50 ms CPU per proxy per change)")
	fs.DurationVar(&o.Timeout, "timeout", 120*time.Second, "bound on each measured step")
	fs.StringVar(&jsonOut, "json", "", "write results as JSON to this file")
	fs.StringVar(&mdOut, "markdown", "", "write results as a markdown table to this file")
	_ = fs.Parse(args)
	o.Impls = split(impls)
	o.Scenarios = split(scenarios)
	o.EDSServices = ints(eds)
	o.StormBatches = ints(batches)
	o.Log = os.Stderr
	// The simulated proxies are the harness, not the system measured: a
	// lazier GC keeps their pauses out of the server's latencies. The
	// server child keeps Go's defaults.
	debug.SetGCPercent(400)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	machine := load.Machine()
	fmt.Fprintln(os.Stderr, "machine:", machine)
	start := time.Now()
	results, err := load.Run(ctx, o)
	fmt.Fprintf(os.Stderr, "done in %v\n", time.Since(start).Round(time.Second))
	var md strings.Builder
	fmt.Fprintf(&md, "Machine: %s. Command: `meshload %s`.\n\n", machine, strings.Join(args, " "))
	load.Markdown(&md, results)
	fmt.Print(md.String())
	if mdOut != "" {
		_ = os.WriteFile(mdOut, []byte(md.String()), 0o644)
	}
	if jsonOut != "" {
		b, _ := json.MarshalIndent(struct {
			Machine string        `json:"machine"`
			Results []load.Result `json:"results"`
		}{machine, results}, "", "  ")
		_ = os.WriteFile(jsonOut, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshload:", err)
		return 1
	}
	for _, r := range results {
		if r.Error != "" && !strings.HasPrefix(r.Error, "skipped") {
			return 1
		}
	}
	return 0
}

func split(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func ints(s string) []int {
	var out []int
	for _, f := range split(s) {
		n, err := strconv.Atoi(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "meshload: %q is not a number\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}
