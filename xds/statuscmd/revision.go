package statuscmd

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/core/admin"
	"github.com/meshd/meshd/xds/api"
)

// Fetch reads every stream's status from the /debug/syncz of the meshd
// whose admin API is at addr.
func Fetch(ctx context.Context, addr string, timeout time.Duration) ([]api.ProxyStatus, error) {
	var out []api.ProxyStatus
	if err := admin.NewClient(addr, timeout, "xds").Do(ctx, http.MethodGet, "/debug/syncz", nil, &out); err != nil {
		return nil, fmt.Errorf("read proxy status: %w", err)
	}
	return out, nil
}

// latestRevision asks galley for its accepted revision: the one an
// operator just applied and wants to see everywhere. Without galley (its
// module off), it falls back to the highest revision any proxy was sent,
// which is the latest the xds server knows of.
func latestRevision(ctx context.Context, addr string, timeout time.Duration, statuses []api.ProxyStatus) uint64 {
	var list struct {
		Current uint64 `json:"current"`
	}
	if err := admin.NewClient(addr, timeout, "galley").Do(ctx, http.MethodGet, "/config/revisions?limit=1", nil, &list); err == nil && list.Current > 0 {
		return list.Current
	}
	var latest uint64
	for _, s := range statuses {
		for _, t := range s.Types {
			latest = max(latest, t.RevisionSent)
		}
	}
	return latest
}

// proxyRev is one proxy's config revision over all its streams and types.
type proxyRev struct {
	low, high uint64
	nacked    bool
}

// byProxy sums up each proxy (node ID) of statuses: a proxy with several
// streams (grpc-go opens one per xDS client) runs a revision only when all
// of them do.
func byProxy(statuses []api.ProxyStatus) map[string]proxyRev {
	out := make(map[string]proxyRev, len(statuses))
	for _, s := range statuses {
		low, high := s.ConfigRevision()
		p, seen := out[s.ID]
		if seen {
			low, high = min(low, p.low), max(high, p.high)
		}
		nacked := p.nacked
		for _, t := range s.Types {
			nacked = nacked || t.State == api.Nacked
		}
		out[s.ID] = proxyRev{low: low, high: high, nacked: nacked}
	}
	return out
}

// ProxiesOn counts, per config revision, the proxies fully on it: every
// type of every stream of the proxy acknowledged resources of that
// revision. Proxies with types on different revisions, or with nothing
// acknowledged, are on none. `meshd config history` shows it.
func ProxiesOn(statuses []api.ProxyStatus) map[uint64]int {
	out := map[uint64]int{}
	for _, p := range byProxy(statuses) {
		if p.low == p.high && p.low > 0 {
			out[p.low]++
		}
	}
	return out
}

// Summary is the line under the status table.
type Summary struct {
	// Proxies counts proxies (node IDs), not streams.
	Proxies int `json:"proxies"`
	// Latest is the latest accepted config revision (0: unknown).
	Latest uint64 `json:"latestRevision"`
	// OnLatest have acknowledged Latest for every type; Behind have not
	// and rejected nothing; NACKed rejected their last response of some
	// type. The three add up to Proxies.
	OnLatest int `json:"onLatest"`
	Behind   int `json:"behind"`
	NACKed   int `json:"nacked"`
}

// Summarize counts statuses' proxies against the latest revision.
func Summarize(statuses []api.ProxyStatus, latest uint64) Summary {
	s := Summary{Latest: latest}
	for _, p := range byProxy(statuses) {
		s.Proxies++
		switch {
		case p.nacked:
			s.NACKed++
		case latest == 0 || p.low >= latest:
			s.OnLatest++
		default:
			s.Behind++
		}
	}
	return s
}

// String is the summary as `meshd status` prints it.
func (s Summary) String() string {
	noun := "proxies"
	if s.Proxies == 1 {
		noun = "proxy"
	}
	if s.Latest == 0 {
		return fmt.Sprintf("%d %s, %d NACKed (no config revision known)", s.Proxies, noun, s.NACKed)
	}
	return fmt.Sprintf("%d %s, %d on the latest revision %d, %d behind, %d NACKed", s.Proxies, noun, s.OnLatest, s.Latest, s.Behind, s.NACKed)
}

// revisionCell is the REVISION column of one stream: the revision every
// type acknowledged ("12"), or when they differ the highest and then each
// type that is on another one ("12 (LDS 11, EDS -)"; "-" is nothing
// acknowledged yet). "-" alone: nothing acknowledged at all.
func revisionCell(s api.ProxyStatus, cols []string) string {
	low, high := s.ConfigRevision()
	if high == 0 {
		return "-"
	}
	cell := strconv.FormatUint(high, 10)
	if low == high {
		return cell
	}
	var lag []string
	for _, c := range cols {
		for _, t := range s.Types {
			if t.TypeURL != c || t.State == api.NotSent || t.RevisionAcked == high {
				continue
			}
			rev := "-"
			if t.RevisionAcked > 0 {
				rev = strconv.FormatUint(t.RevisionAcked, 10)
			}
			lag = append(lag, strings.ToUpper(api.ShortType(c))+" "+rev)
		}
	}
	return cell + " (" + strings.Join(lag, ", ") + ")"
}
