// Command csv-source is the example discovery plugin: it serves the
// services listed in a CSV file to meshd's service registry, and serves them
// again whenever the file changes. See docs/plugins.md.
//
//	modules:
//	  plugins:
//	    plugins:
//	    - name: csv
//	      kind: discovery
//	      path: /usr/local/lib/meshd/csv-source
//	      sha256: <sha256sum of the binary>
//	      config:
//	        file: /etc/meshd/services.csv
package main

import (
	"github.com/meshd/meshd/examples/plugins/csv-source/csvsource"
	"github.com/meshd/meshd/sdk"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0"

func main() {
	cfg := csvsource.DefaultConfig()
	sdk.ServeDiscovery(
		sdk.Info{Name: "csv-source", Version: version, Description: "services and endpoints from a CSV file"},
		csvsource.New(&cfg, sdk.Logger()),
		sdk.WithConfig(&cfg),
	)
}
