package galley

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/meshd/meshd/modules/galley/api"
)

// TestHistoryDiffRollback drives the admin API: history, one revision,
// diff, rollback, and what files do after a rollback, across a restart.
func TestHistoryDiffRollback(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.start()
	h.waitRevision(1)
	for i, d := range []string{"2s", "3s"} {
		h.write("routes.yaml", vs(d))
		h.waitRevision(uint64(i + 2))
	}

	var list RevisionList
	require.Equal(t, http.StatusOK, h.get("/config/revisions", &list))
	require.Equal(t, uint64(3), list.Current)
	require.Len(t, list.Revisions, 3)
	require.Equal(t, uint64(3), list.Revisions[0].Revision, "newest first")
	require.Equal(t, RevisionInfo{Revision: 1, Reason: ReasonChange, Objects: 3, Added: 3}, stripRev(list.Revisions[2]))
	require.Equal(t, []string{h.path("routes.yaml")}, list.Revisions[0].Origins)
	require.Equal(t, 1, list.Revisions[0].Updated)
	require.Equal(t, http.StatusOK, h.get("/config/revisions?limit=1", &list))
	require.Len(t, list.Revisions, 1)

	var rev RevisionDetail
	require.Equal(t, http.StatusOK, h.get("/config/revisions/2", &rev))
	require.Equal(t, []ChangeView{{Key: "VirtualService/shop/reviews", Op: OpUpdate, Origin: h.path("routes.yaml")}}, rev.Changes)
	require.Len(t, rev.Config, 3)
	require.Equal(t, api.Key("DestinationRule/shop/reviews"), rev.Config[0].Key)
	require.Contains(t, compact(t, rev.Config[2].Object), `"timeout":"2s"`)
	require.Equal(t, 10, rev.Config[0].Line, "line of the DestinationRule in reviews.yaml")

	var errBody AdminError
	require.Equal(t, http.StatusNotFound, h.get("/config/revisions/9", &errBody))
	require.Contains(t, errBody.Error, "history holds 1 to 3")
	require.Equal(t, http.StatusBadRequest, h.get("/config/revisions/x", &errBody))

	var d Diff
	require.Equal(t, http.StatusOK, h.get("/config/diff?from=1&to=3", &d))
	require.Len(t, d.Changed, 1)
	require.Empty(t, d.Added)
	require.Empty(t, d.Removed)
	require.Contains(t, compact(t, d.Changed[0].From.Object), `"timeout":"1s"`)
	require.Contains(t, compact(t, d.Changed[0].To.Object), `"timeout":"3s"`)
	require.Equal(t, http.StatusOK, h.get("/config/diff", &d))
	require.Equal(t, uint64(2), d.From)
	require.Equal(t, uint64(3), d.To)

	// Roll back to revision 1: a new revision 4 equal to 1.
	var rb RollbackResult
	require.Equal(t, http.StatusOK, h.post("/config/rollback?to=1", &rb))
	require.Equal(t, RollbackResult{Revision: 4, To: 1, Updated: 1}, rb)
	require.Equal(t, "1s", h.timeout())
	require.Equal(t, uint64(4), h.m.Accepted().Revision())
	require.Equal(t, StateHeld, h.origin("routes.yaml").State)
	require.Equal(t, http.StatusOK, h.get("/config/revisions?limit=1", &list))
	require.Equal(t, ReasonRollback, list.Revisions[0].Reason)
	require.Equal(t, uint64(1), list.Revisions[0].RollbackTo)
	var first, last RevisionInfo
	require.Equal(t, http.StatusOK, h.get("/config/revisions", &list))
	first, last = list.Revisions[3], list.Revisions[0]
	require.Equal(t, first.Digest, last.Digest, "revision 4 holds what revision 1 held")
	require.Equal(t, http.StatusBadRequest, h.post("/config/rollback", &errBody))
	require.Equal(t, http.StatusNotFound, h.post("/config/rollback?to=99", &errBody))

	// Rolling back to what is already served makes no revision.
	require.Equal(t, http.StatusOK, h.post("/config/rollback?to=4", &rb))
	require.Equal(t, uint64(4), rb.Revision)

	// The files still say 3s, but that content is held: neither a resync
	// nor a restart applies it again.
	h.restart()
	h.eventually("sources read", func() bool { return h.m.Configz().Sources[0].Synced && h.m.Ready() == nil })
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, uint64(4), h.m.Accepted().Revision())
	require.Equal(t, "1s", h.timeout())
	require.Equal(t, StateHeld, h.origin("routes.yaml").State)

	// A file changed after the rollback is accepted as usual.
	h.write("routes.yaml", vs("4s"))
	h.waitRevision(5)
	require.Equal(t, "4s", h.timeout())
	require.Equal(t, StateAccepted, h.origin("routes.yaml").State)
	require.Equal(t, StateHeld, h.origin("reviews.yaml").State, "unchanged files stay held")
}

func compact(t *testing.T, raw []byte) string {
	var b bytes.Buffer
	require.NoError(t, json.Compact(&b, raw))
	return b.String()
}

func stripRev(r RevisionInfo) RevisionInfo {
	r.Time, r.Digest, r.Origins = time.Time{}, "", nil
	return r
}

// TestHistoryIsBounded: only Config.History revisions are kept, and blobs
// no kept revision refers to are deleted.
func TestHistoryIsBounded(t *testing.T) {
	h := newHarness(t)
	h.cfg.History = 3
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", vs("1s"))
	h.start()
	h.waitRevision(1)
	for i := 2; i <= 8; i++ {
		h.write("routes.yaml", vs(strings.Repeat("1", i)+"ms"))
		h.waitRevision(uint64(i))
	}
	var list RevisionList
	h.get("/config/revisions", &list)
	require.Len(t, list.Revisions, 3)
	require.Equal(t, uint64(6), list.Revisions[2].Revision)

	// Revision 6 is rebuilt from current by undoing 8 and 7.
	var rev RevisionDetail
	require.Equal(t, http.StatusOK, h.get("/config/revisions/6", &rev))
	require.Contains(t, compact(t, rev.Config[2].Object), `"timeout":"111.111s"`)

	// Blobs: 2 unchanged objects, and the VirtualService of revisions 5
	// (the before of 6) to 8.
	blobs, refs := 0, 0
	require.NoError(t, h.m.store.ns.View(func(b *bolt.Bucket) error {
		blobs = b.Bucket(bucketBlobs).Stats().KeyN
		refs = b.Bucket(bucketRefs).Stats().KeyN
		return nil
	}))
	require.Equal(t, 6, blobs)
	require.Equal(t, 6, refs)

	var rb RollbackResult
	require.Equal(t, http.StatusOK, h.post("/config/rollback?to=6", &rb))
	require.Equal(t, uint64(9), rb.Revision)
	var errBody AdminError
	require.Equal(t, http.StatusNotFound, h.post("/config/rollback?to=6", &errBody), "6 was pruned by 9")
}

// TestCanonicalRoundTrip: every object of the bookstore example survives
// the store's encoding with its meaning (hash) intact.
func TestCanonicalRoundTrip(t *testing.T) {
	res := New(Options{}).CheckPaths("../../examples/bookstore")
	require.NotEmpty(t, res.Objects)
	for _, o := range res.Objects {
		data, err := canonical(o)
		require.NoError(t, err)
		back, err := fromCanonical(data, Entry{File: "f.yaml", Line: 3})
		require.NoError(t, err, "%s:\n%s", o.Key(), data)
		require.Equal(t, o.Key(), back.Key())
		require.Equal(t, o.Hash, back.Hash, "%s:\n%s", o.Key(), data)
		again, err := canonical(back)
		require.NoError(t, err)
		require.JSONEq(t, string(data), string(again))
		require.Equal(t, string(data), string(again), "canonical bytes are stable")
		require.Equal(t, api.Source{File: "f.yaml", Line: 3}, back.Source)
	}
}

// TestConfigzJSON pins the configz document's shape.
func TestConfigzJSON(t *testing.T) {
	h := newHarness(t)
	h.write("reviews.yaml", reviewsSE+"---\n"+reviewsDR)
	h.write("routes.yaml", strings.Replace(vs("1s"), "weight: 10", "weight: 20", 1))
	h.write("broken.yaml", "kind: [")
	h.start()
	h.eventually("ready", func() bool { return h.m.Ready() == nil })
	var z map[string]any
	require.Equal(t, http.StatusOK, h.get("/debug/configz", &z))
	raw, _ := json.Marshal(z)
	for _, key := range []string{`"revision":1`, `"ready":true`, `"sources":[{"name":"files","synced":true}]`, `"state":"accepted"`, `"registry":false`, `"warnings":[`, `"GAL2010"`, `"state":"rejected"`, `"GAL1001"`, `"pending":true`} {
		require.Contains(t, string(raw), key)
	}
}
