package main

import (
	"context"
	"strings"
	"testing"

	"github.com/meshd/meshd/core/plugin/plugintest"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/pluginvalidator"
)

const config = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: catch-all, namespace: shop}
spec:
  hosts:
  - reviews
  - "*.example.com"
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*/shop.example.com", "./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress:
  - hosts: ["./*", "istio-system/*"]
`

func TestWildcards(t *testing.T) {
	res := decode.New(decode.Options{}).Decode("mesh.yaml", []byte(config))
	if len(res.Findings) > 0 {
		t.Fatalf("decode: %v", res.Findings)
	}
	for _, path := range []string{"in process", "shims"} {
		t.Run(path, func(t *testing.T) {
			var v api.Validator = &validator{cfg: Config{Severity: "error", AllowNamespaces: []string{"istio-system"}}}
			if path == "shims" {
				v = plugintest.Dispense(t, pluginvalidator.Kind, pluginvalidator.Plugin(v)).(api.Validator)
			}
			got, err := v.Validate(context.Background(), res.Objects)
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, f := range got {
				if path == "in process" { // galley fills these in; the shims do too
					for _, o := range res.Objects {
						if o.Key() == f.Object {
							f.File, f.Line = o.Source.File, o.Line(f.Field)
						}
					}
				}
				lines = append(lines, f.String())
			}
			want := []string{
				`mesh.yaml:7: ERROR WILDCARD001 VirtualService/shop/catch-all: spec.hosts[1]: wildcard host "*.example.com" is not allowed in namespace shop; name the hosts (allowed in: istio-system)`,
				`mesh.yaml:28: ERROR WILDCARD001 Gateway/shop/shop: spec.servers[0].hosts[1]: wildcard host "*" is not allowed in namespace shop; name the hosts (allowed in: istio-system)`,
			}
			if strings.Join(lines, "\n") != strings.Join(want, "\n") {
				t.Fatalf("findings:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}
