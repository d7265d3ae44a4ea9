package cli

import (
	"context"

	"github.com/meshd/meshd/xds/statuscmd"
)

// proxyCounts is the galleycli.ProxyCounter of `meshd config history`: how
// many connected proxies run each config revision for every resource type,
// from the running meshd's /debug/syncz. Galley and xds meet here, in the
// binary that has both. ctx carries history's deadline.
func proxyCounts(ctx context.Context, admin string) (map[uint64]int, error) {
	statuses, err := statuscmd.Fetch(ctx, admin, 0)
	if err != nil {
		return nil, err
	}
	return statuscmd.ProxiesOn(statuses), nil
}
