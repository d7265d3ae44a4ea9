package core_test

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/config"
)

func decodeRoot(t *testing.T, text string) (core.Config, error) {
	t.Helper()
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	cfg := core.DefaultConfig()
	if err := config.Decode(raw, &cfg, ""); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func TestMeshSecurityDecode(t *testing.T) {
	cfg, err := decodeRoot(t, `
mesh:
  extensionProviders:
  - name: ext-grpc
    envoyExtAuthzGrpc: {service: authz.tools.svc.cluster.local, port: 9000, timeout: 500ms}
  - name: ext-http
    envoyExtAuthzHttp:
      service: authz.tools.svc.cluster.local
      port: 8000
      pathPrefix: /check
      includeRequestHeadersInCheck: [x-user]
  rateLimits:
  - name: reviews
    namespace: shop
    selector: {app: reviews}
    ports: [9080]
    match: {paths: [/api/*], methods: [GET]}
    tokenBucket: {maxTokens: 10, fillInterval: 1s}
`)
	if err != nil {
		t.Fatal(err)
	}
	ps := cfg.Mesh.Providers()
	if len(ps) != 2 || ps[0].EnvoyExtAuthzGRPC.Timeout != 500*time.Millisecond || ps[1].EnvoyExtAuthzHTTP.PathPrefix != "/check" {
		t.Fatalf("providers: %+v", ps)
	}
	if p, ok := cfg.Mesh.Provider("ext-http"); !ok || p.EnvoyExtAuthzHTTP.Port != 8000 {
		t.Fatalf("Provider: %+v %v", p, ok)
	}
	rl := cfg.Mesh.LocalRateLimits()
	if len(rl) != 1 || rl[0].TokenBucket.MaxTokens != 10 || rl[0].Match.Paths[0] != "/api/*" || rl[0].Ports[0] != 9080 {
		t.Fatalf("rate limits: %+v", rl)
	}
	// MeshConfig stays comparable: generators use it as a cache key.
	m := map[core.MeshConfig]bool{cfg.Mesh: true}
	if !m[cfg.Mesh] {
		t.Fatal("not comparable")
	}
	if core.DefaultMeshConfig().Providers() != nil || core.DefaultMeshConfig().LocalRateLimits() != nil {
		t.Fatal("defaults are not empty")
	}
}

func TestMeshSecurityValidate(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"mesh: {extensionProviders: [{name: a}]}", "mesh.extensionProviders[0]: set envoyExtAuthzGrpc or envoyExtAuthzHttp"},
		{"mesh: {extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: s, port: 0}}]}", "mesh.extensionProviders[0].envoyExtAuthzGrpc.port: 0 is not in 1..65535"},
		{"mesh: {extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: s, port: 1}}, {name: a, envoyExtAuthzGrpc: {service: s, port: 1}}]}", `mesh.extensionProviders[1].name: "a" is used twice`},
		{"mesh: {extensionProviders: [{name: a, envoyExtAuthzHttp: {service: s, port: 1, pathPrefix: x}}]}", `pathPrefix: "x" must start with /`},
		{"mesh: {rateLimits: [{name: r, namespace: shop, tokenBucket: {maxTokens: 1, fillInterval: 10ms}}]}", "fillInterval: 10ms is below Envoy's minimum of 50ms"},
		{"mesh: {rateLimits: [{name: r, namespace: shop, tokenBucket: {maxTokens: 0, fillInterval: 1s}}]}", "maxTokens: must be at least 1"},
		{"mesh: {rateLimits: [{name: r, tokenBucket: {maxTokens: 1, fillInterval: 1s}}]}", "mesh.rateLimits[0].namespace: must not be empty"},
		{"mesh: {rateLimits: [{name: 'a b', namespace: x, tokenBucket: {maxTokens: 1, fillInterval: 1s}}]}", `may use only letters`},
		{"mesh: {rateLimits: [{name: r, namespace: x, match: {paths: ['/a*b']}, tokenBucket: {maxTokens: 1, fillInterval: 1s}}]}", `"/a*b" must be exact, /prefix*, *suffix or *`},
		{"mesh: {rateLimits: [{name: r, namespace: x, match: {}, tokenBucket: {maxTokens: 1, fillInterval: 1s}}]}", "match: is empty"},
		{"mesh: {rateLimits: [{name: r, namespace: x, ports: [70000], tokenBucket: {maxTokens: 1, fillInterval: 1s}}]}", "ports[0]: 70000 is not in 1..65535"},
	} {
		_, err := decodeRoot(t, tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.yaml, err, tc.want)
		}
	}
	if _, err := decodeRoot(t, "mesh: {rateLimits: [{name: r, namespace: x, bogus: 1}]}"); err == nil || !strings.Contains(err.Error(), "mesh.rateLimits") {
		t.Errorf("unknown key: %v", err)
	}
}

func TestMeshSecurityReference(t *testing.T) {
	var paths []string
	for _, f := range config.Fields(core.DefaultConfig(), "") {
		paths = append(paths, f.Path+"="+f.Default)
	}
	all := strings.Join(paths, " ")
	for _, want := range []string{"mesh.extensionProviders=[]", "mesh.rateLimits=[]"} {
		if !strings.Contains(all, want) {
			t.Errorf("config reference lacks %s: %s", want, all)
		}
	}
}
