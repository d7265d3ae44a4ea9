package load

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// Machine describes where the run happened: CPUs, model, load average.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = ", load average " + strings.Join(f[:3], " ") + " at start"
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			var kb int64
			fmt.Sscan(f[1], &kb)
			mem = fmt.Sprintf(", %.0f GB RAM", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%d CPUs (GOMAXPROCS %d), %s%s, %s/%s, %s%s", runtime.NumCPU(), runtime.GOMAXPROCS(0), model, mem, runtime.GOOS, runtime.GOARCH, runtime.Version(), load)
}

// Markdown writes results as a table, the storm memory points, and the
// baseline-to-meshd CPU ratios.
func Markdown(w io.Writer, results []Result) {
	fmt.Fprintln(w, "| scenario | server | services | proxies | protocol | ops | wall per op (median / best) | server CPU-s per op | wire MB per op | p50 / p99 / max ms | RSS MB | Go heap MB |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		if r.Ops == 0 {
			fmt.Fprintf(w, "| %s | %s | %d | %d | %s | 0 | %s |  |  |  |  |  |\n", r.Scenario, r.Impl, r.Services, r.Proxies, r.Protocol, r.Error)
			continue
		}
		note := ""
		if r.Error != "" {
			note = " (" + r.Error + ")"
		}
		fmt.Fprintf(w, "| %s | %s | %d | %d | %s | %d | %.3f s / %.3f s%s | %.3f | %.1f | %.0f / %.0f / %.0f | %.0f | %.0f |\n",
			r.Scenario, r.Impl, r.Services, r.Proxies, r.Protocol, r.Ops, r.WallSeconds, r.WallBestSeconds, note,
			r.CPUSeconds, float64(r.BytesSent)/1e6, r.P50Millis, r.P99Millis, r.MaxMillis, mb(r.RSSBytes), mb(int64(r.HeapInuse)))
	}
	var mem []string
	for _, r := range results {
		if len(r.Memory) < 2 {
			continue
		}
		a, b := r.Memory[0], r.Memory[len(r.Memory)-1]
		per := float64(b.RSSBytes-a.RSSBytes) / float64(b.Proxies-a.Proxies)
		perHeap := float64(int64(b.HeapInuse)-int64(a.HeapInuse)) / float64(b.Proxies-a.Proxies)
		mem = append(mem, fmt.Sprintf("| %s | %d → %d | %.0f → %.0f | %.0f → %.0f | %.0f kB | %.0f kB |",
			r.Impl, a.Proxies, b.Proxies, mb(a.RSSBytes), mb(b.RSSBytes), mb(int64(a.HeapInuse)), mb(int64(b.HeapInuse)), per/1e3, perHeap/1e3))
	}
	if len(mem) > 0 {
		fmt.Fprint(w, "\nMemory with proxies receiving every service (memory: batches connecting one after the other, after GC):\n\n")
		fmt.Fprintln(w, "| server | proxies | RSS MB | Go heap MB | RSS per added proxy | heap per added proxy |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
		for _, m := range mem {
			fmt.Fprintln(w, m)
		}
	}
	var ratios []string
	for _, b := range results {
		if b.Impl != ImplBaseline || b.Ops == 0 {
			continue
		}
		for _, m := range results {
			if m.Impl != ImplMeshd || m.Ops == 0 || m.Scenario != b.Scenario || m.Services != b.Services || m.CPUSeconds <= 0 {
				continue
			}
			if m.Proxies == b.Proxies {
				ratios = append(ratios, fmt.Sprintf("| %s | %d | %d | %.3f | %.3f | %.1fx |", b.Scenario, b.Services, b.Proxies, m.CPUSeconds, b.CPUSeconds, b.CPUSeconds/m.CPUSeconds))
			} else { // compare per proxy
				mp, bp := m.CPUSeconds/float64(m.Proxies), b.CPUSeconds/float64(b.Proxies)
				ratios = append(ratios, fmt.Sprintf("| %s (per proxy) | %d | %d vs %d | %.1f µs | %.1f µs | %.1fx |", b.Scenario, b.Services, m.Proxies, b.Proxies, mp*1e6, bp*1e6, bp/mp))
			}
		}
	}
	if len(ratios) > 0 {
		fmt.Fprint(w, "\nServer CPU per op, baseline over meshd:\n\n")
		fmt.Fprintln(w, "| scenario | services | proxies | meshd CPU-s | baseline CPU-s | ratio |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
		for _, r := range ratios {
			fmt.Fprintln(w, r)
		}
	}
}

func mb(b int64) float64 { return float64(b) / 1e6 }
