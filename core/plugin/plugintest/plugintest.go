// Package plugintest connects a plugin kind's two gRPC shims in one process
// through go-plugin's TestPluginGRPCConn, for conformance suites: the same
// suite runs against a built-in implementation and against the shims, and
// must see the same behaviour.
package plugintest

import (
	"context"
	"testing"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/core/plugin"
)

// Dispense serves p's plugin side on an in-process go-plugin gRPC server
// and returns what its host side builds: the kind's Go interface, backed by
// the gRPC shims. Both ends are closed when the test ends.
func Dispense(t testing.TB, kind string, p goplugin.Plugin) any {
	t.Helper()
	client, server := goplugin.TestPluginGRPCConn(t, false, map[string]goplugin.Plugin{kind: p})
	t.Cleanup(func() {
		// Server first: client.Close asks the server to stop itself, and
		// go-plugin's Stop is not safe to run twice at once.
		server.Stop()
		_ = client.Close()
	})
	raw, err := client.Dispense(kind)
	if err != nil {
		t.Fatalf("dispense %s: %v", kind, err)
	}
	return raw
}

// Connect serves a kind's service (registered by register, as the plugin
// side does) in process and returns the host side's raw connection to it,
// for tests that drive the wire protocol themselves.
func Connect(t testing.TB, kind string, register func(*grpc.Server) error) grpc.ClientConnInterface {
	t.Helper()
	return Dispense(t, kind, &plugin.GRPCPlugin{
		Register: register,
		Connect: func(_ context.Context, cc *grpc.ClientConn) (any, error) {
			return cc, nil
		},
	}).(*grpc.ClientConn)
}
