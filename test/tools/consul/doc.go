// Package consul pins the Consul agent that the Consul tests run; see go.mod
// and ../build.sh.
package consul
