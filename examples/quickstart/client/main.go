// Command client is the quickstart's proxyless gRPC client: it dials the
// greeter through meshd (xds:///greeter.demo.svc.cluster.local:7070), with
// no sidecar and no DNS, and prints once a second how its calls were split
// between the greeter's versions. Edit examples/quickstart/mesh/routing.yaml
// while it runs and watch the split change.
//
//	go run ./examples/quickstart/client
//
// gRPC learns where meshd is from its xDS bootstrap, which grpc-go reads
// from GRPC_XDS_BOOTSTRAP (a file, see bootstrap.json) or
// GRPC_XDS_BOOTSTRAP_CONFIG (the JSON itself) when the process starts. When
// neither is set, the client writes the bootstrap for -xds and -namespace
// into GRPC_XDS_BOOTSTRAP_CONFIG and starts itself again.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	_ "google.golang.org/grpc/xds" // the xds:/// resolver

	"github.com/meshd/meshd/examples/quickstart/greeter"
)

func main() {
	target := flag.String("target", "xds:///greeter.demo.svc.cluster.local:7070", "what to dial")
	xdsAddr := flag.String("xds", "127.0.0.1:15010", "meshd's xDS address, for the bootstrap")
	namespace := flag.String("namespace", "demo", "the client's namespace, for the bootstrap")
	calls := flag.Int("calls", 100, "calls per round from everyone")
	testerCalls := flag.Int("tester-calls", 20, "calls per round with the header x-user: tester")
	interval := flag.Duration("interval", time.Second, "time between rounds")
	rounds := flag.Int("rounds", 0, "stop after this many rounds (0: run until interrupted)")
	flag.Parse()

	if os.Getenv("GRPC_XDS_BOOTSTRAP") == "" && os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG") == "" {
		os.Exit(restartWithBootstrap(*xdsAddr, *namespace))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cc, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	defer cc.Close()

	fmt.Printf("calling %s every %v; edit examples/quickstart/mesh/routing.yaml to change the split\n", *target, *interval)
	if err := waitForMesh(ctx, cc); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for round := 1; ; round++ {
		everyone := callMany(ctx, cc, *calls, nil)
		tester := callMany(ctx, cc, *testerCalls, metadata.Pairs("x-user", "tester"))
		fmt.Printf("%s  everyone: %-24s  x-user=tester: %s\n", time.Now().Format("15:04:05.000"), everyone, tester)
		if *rounds > 0 && round >= *rounds {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// waitForMesh makes one call that waits for meshd's config and a backend,
// so the first round is not a row of errors while the client starts.
func waitForMesh(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := greeter.SayHello(ctx, cc, "quickstart", grpc.WaitForReady(true)); err != nil {
		return fmt.Errorf("no answer through meshd within 30s (is meshd serving examples/quickstart/meshd.yaml, and are the backends running?): %w", err)
	}
	return nil
}

// split is how a round's calls went: answers by backend version, failures
// by status code.
type split struct {
	total int
	by    map[string]int
}

func (s split) String() string {
	keys := make([]string, 0, len(s.by))
	for k := range s.by {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %3d%%", k, (100*s.by[k]+s.total/2)/s.total)
	}
	return strings.Join(parts, "  ")
}

// callMany makes n calls, eight at a time, and tallies where they went.
func callMany(ctx context.Context, cc *grpc.ClientConn, n int, md metadata.MD) split {
	s := split{total: n, by: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range min(8, n) {
		wg.Go(func() {
			for range work {
				cctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), 2*time.Second)
				version, err := greeter.SayHello(cctx, cc, "quickstart")
				cancel()
				if err != nil {
					version = "error:" + status.Code(err).String()
				}
				mu.Lock()
				s.by[version]++
				mu.Unlock()
			}
		})
	}
	for range n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	return s
}

// restartWithBootstrap runs this program again with an xDS bootstrap that
// points at meshd, since grpc-go reads the bootstrap only at start.
func restartWithBootstrap(xdsAddr, namespace string) int {
	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{
			"id": fmt.Sprintf("quickstart-client-%d", os.Getpid()),
			// meshd reads the namespace (which services and rules apply) and
			// the generator (a proxyless gRPC client, not an Envoy).
			"metadata": map[string]any{"NAMESPACE": namespace, "GENERATOR": "grpc"},
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Ctrl-C reaches both processes; a signal sent to this one alone is
	// passed on. Either way this one waits for the other to finish.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	go func() {
		for sig := range sigs {
			_ = cmd.Process.Signal(sig)
		}
	}()
	if err := cmd.Wait(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	return 0
}
