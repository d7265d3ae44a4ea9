package security_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// Loopback addresses of the workloads: the server and two mesh clients
// are WorkloadEntries labelled as in the mesh; the plaintext client's
// address is unknown to the mesh.
const (
	serverAddr    = "127.0.0.2"
	alphaAddr     = "127.0.0.3"
	betaAddr      = "127.0.0.4"
	plaintextAddr = "127.0.0.5"

	target = "xds:///echo.shop.svc.cluster.local:7000"
	alpha  = "spiffe://cluster.local/ns/clients/sa/alpha"
)

// e2eMesh is the echo service (one proxyless server) and the two client
// workloads; policies is appended.
func e2eMesh(port int, policies ...string) string {
	return fmt.Sprintf(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: grpc, number: 7000, protocol: GRPC}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: shop}
spec:
  address: %s
  ports: {grpc: %d}
  serviceAccount: echo
  labels: {app: echo, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: alpha, namespace: clients}
spec:
  address: %s
  serviceAccount: alpha
  labels: {app: alpha, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: beta, namespace: clients}
spec:
  address: %s
  serviceAccount: beta
  labels: {app: beta, security.istio.io/tlsMode: istio}
`, serverAddr, port, alphaAddr, betaAddr) + strings.Join(policies, "")
}

const (
	strict = `
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
`
	allowAlpha = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/clients/sa/alpha]}}]}]
`
	allowBeta = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/clients/sa/beta]}}]}]
`
	denyOther = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-deny, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{to: [{operation: {paths: [/meshd.test.Echo/Other]}}]}]
`
)

func freePort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s (loopback aliases needed): %v", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestE2EProxylessSecurity runs a real xDS-enabled grpc-go server and
// clients (certificates from a citadel CA, read by the file_watcher
// provider) against meshd's pilot and xds, and changes PeerAuthentication
// and AuthorizationPolicy under them:
//
//   - PERMISSIVE (the mesh default) accepts the mesh client's mTLS (the
//     server sees its SPIFFE ID) and a plaintext client from an address
//     the mesh does not know;
//   - STRICT rejects the plaintext client, the mesh client keeps working;
//   - an ALLOW policy naming one SPIFFE principal lets that client through
//     and gives the other PERMISSION_DENIED;
//   - a DENY on a method path wins over the ALLOW for that path only;
//   - switching the ALLOW to the other principal takes effect on the
//     clients' running channels within a second.
func TestE2EProxylessSecurity(t *testing.T) {
	if testing.Short() {
		t.Skip("starts grpc-go child processes")
	}
	port := freePort(t, serverAddr)
	freePort(t, alphaAddr)
	freePort(t, plaintextAddr)
	ca := newMesh(t)
	e := start(t, e2eMesh(port))

	server := startChild(t, "server", "echo server", bootstrapFor(t, e.xdsAddr(), "echo-1",
		map[string]any{"NAMESPACE": "shop", "SERVICE_ACCOUNT": "echo", "INSTANCE_IPS": serverAddr, "LABELS": map[string]any{"app": "echo"}},
		ca.issue(t, "shop", "echo")), fmt.Sprintf("%s=%s:%d", envListen, serverAddr, port))
	for deadline := time.Now().Add(20 * time.Second); ; {
		line, ok := server.next(time.Until(deadline))
		if !ok {
			t.Fatalf("the server did not start serving (its listener from meshd never arrived)")
		}
		if strings.HasPrefix(line, "mode SERVING") {
			break
		}
		t.Logf("server: %s", line)
	}
	client := func(name, addr string) *child {
		return startChild(t, "client", name, bootstrapFor(t, e.xdsAddr(), name,
			map[string]any{"NAMESPACE": "clients", "SERVICE_ACCOUNT": name}, ca.issue(t, "clients", name)),
			envSource+"="+addr)
	}
	alphaC, betaC := client("alpha", alphaAddr), client("beta", betaAddr)
	plain, err := dialFrom(fmt.Sprintf("%s:%d", serverAddr, port), plaintextAddr, false)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plainCall := func(method string) result { return call{Method: method, N: 1, Timeout: 2 * time.Second}.run(plain) }

	// eventually polls f until it reports success, for config that has
	// been applied but may not have reached the proxies yet.
	eventually := func(what string, within time.Duration, f func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			ok, got := f()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v; last: %s", what, within, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	answeredBy := func(c *child, method, who string) func() (bool, string) {
		return func() (bool, string) {
			r := c.run(call{Target: target, Method: method, N: 1, Timeout: 2 * time.Second, WaitForReady: true})
			return r.Answers[who] == 1, fmt.Sprintf("%+v", r)
		}
	}
	refused := func(c *child, method string, code codes.Code) func() (bool, string) {
		return func() (bool, string) {
			r := c.run(call{Target: target, Method: method, N: 1, Timeout: 2 * time.Second})
			return r.only(code), fmt.Sprintf("%+v", r)
		}
	}

	t.Run("PERMISSIVE accepts mTLS and plaintext", func(t *testing.T) {
		eventually("alpha over mTLS", 15*time.Second, answeredBy(alphaC, methodCall, alpha))
		eventually("plaintext client", 10*time.Second, func() (bool, string) {
			r := plainCall(methodCall)
			return r.Answers["plaintext"] == 1, fmt.Sprintf("%+v", r)
		})
	})

	t.Run("STRICT rejects a plaintext client", func(t *testing.T) {
		e.galley.apply(t, e2eMesh(port, strict))
		eventually("plaintext refused", 10*time.Second, func() (bool, string) {
			r := plainCall(methodCall)
			return r.Codes[codes.OK.String()] == 0, fmt.Sprintf("%+v", r)
		})
		r := plainCall(methodCall)
		if r.Codes[codes.Unavailable.String()] != 1 {
			t.Errorf("plaintext client under STRICT: %+v, want UNAVAILABLE (handshake refused)", r)
		}
		eventually("alpha still served over mTLS", 10*time.Second, answeredBy(alphaC, methodCall, alpha))
	})

	t.Run("ALLOW one principal", func(t *testing.T) {
		e.galley.apply(t, e2eMesh(port, strict, allowAlpha))
		eventually("beta denied", 10*time.Second, refused(betaC, methodCall, codes.PermissionDenied))
		eventually("alpha allowed", 10*time.Second, answeredBy(alphaC, methodCall, alpha))
	})

	t.Run("DENY on a path wins over ALLOW", func(t *testing.T) {
		e.galley.apply(t, e2eMesh(port, strict, allowAlpha, denyOther))
		eventually("alpha denied Other", 10*time.Second, refused(alphaC, methodOther, codes.PermissionDenied))
		eventually("alpha allowed Call", 10*time.Second, answeredBy(alphaC, methodCall, alpha))
		eventually("beta still denied", 10*time.Second, refused(betaC, methodCall, codes.PermissionDenied))
	})

	t.Run("policy change applies to running channels within 1s", func(t *testing.T) {
		// Both channels are connected and alpha is served.
		if r := alphaC.run(call{Target: target, N: 5}); r.Answers[alpha] != 5 {
			t.Fatalf("alpha before the change: %+v", r)
		}
		start := time.Now()
		e.galley.apply(t, e2eMesh(port, strict, allowBeta, denyOther))
		var took time.Duration
		for {
			r := alphaC.run(call{Target: target, N: 1, Timeout: time.Second})
			if r.only(codes.PermissionDenied) {
				took = time.Since(start)
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("alpha still served 5s after it lost its ALLOW: %+v", r)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("alpha denied %v after the change", took)
		if took > time.Second {
			t.Errorf("the change took %v to apply, want under 1s", took)
		}
		eventually("beta allowed", 2*time.Second, answeredBy(betaC, methodCall, "spiffe://cluster.local/ns/clients/sa/beta"))
	})
}
