// Tools module for tests: builds a real Consul agent from the Go module proxy.
// Build it with test/tools/build.sh (it sets GONOSUMDB for consul-awsauth).
module github.com/meshd/meshd/test/tools/consul

go 1.26.0

require github.com/hashicorp/consul v1.20.6

replace (
	// Newer go-metrics releases moved to github.com/hashicorp/go-metrics and
	// no longer satisfy consul's types.
	github.com/armon/go-metrics => github.com/armon/go-metrics v0.4.1
	// consul's own go.mod replaces these with ./api etc., which does not
	// apply to a dependency; pin the releases v1.20.6 requires.
	github.com/hashicorp/consul/api => github.com/hashicorp/consul/api v1.31.2
	github.com/hashicorp/consul/envoyextensions => github.com/hashicorp/consul/envoyextensions v0.7.3
	github.com/hashicorp/consul/proto-public => github.com/hashicorp/consul/proto-public v0.6.2
	github.com/hashicorp/consul/sdk => github.com/hashicorp/consul/sdk v0.16.1
	github.com/hashicorp/consul/troubleshoot => github.com/hashicorp/consul/troubleshoot v0.7.1
)
