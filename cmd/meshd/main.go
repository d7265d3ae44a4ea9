// Command meshd is the meshd service-mesh control plane. See README.md.
package main

import (
	"os"

	"github.com/meshd/meshd/cmd/meshd/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
