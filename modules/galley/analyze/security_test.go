package analyze_test

// Cases of the security analyzers (security.go), added to the shared
// table so TestAnalyzers runs them and TestEveryAnalysisCodeIsTested sees
// their codes.
func init() {
	// The proxyless marker is an annotation, which doc() cannot set.
	grpcServer := `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo, namespace: ns, annotations: {inject.istio.io/templates: grpc-agent}}
spec:
  address: 10.0.0.7
  labels: {app: echo}
`
	cases["security"] = []acase{
		{name: "policies a proxyless server can enforce", src: withBase(grpcServer, doc("AuthorizationPolicy", "echo", `
selector: {matchLabels: {app: echo}}
rules:
- from: [{source: {principals: [cluster.local/ns/ns/sa/client], namespaces: [ns]}}]
  to: [{operation: {paths: [/pkg.Svc/Get], ports: ["7000"]}}]
  when: [{key: "request.headers[x-user]", values: [alice]}, {key: source.ip, values: [10.0.0.0/8]}]
`))},
		{name: "what a proxyless server cannot evaluate", src: withBase(grpcServer, doc("AuthorizationPolicy", "echo-allow", `
selector: {matchLabels: {app: echo}}
rules:
- from:
  - source: {requestPrincipals: [issuer/alice]}  #! GAL3017
  when:
  - {key: "request.auth.claims[group]", values: [admins]}  #! GAL3017
  - {key: "request.headers[grpc-trace-bin]", values: ["*"]}  #! GAL3017
  - {key: connection.sni, values: [echo.example.com]}  #! GAL3017
`), doc("AuthorizationPolicy", "echo-deny", `
selector: {matchLabels: {app: echo}}
action: DENY
rules:
- from:
  - source: {notRequestPrincipals: ["*"]}  #! GAL3017
`), doc("AuthorizationPolicy", "echo-ext", `
selector: {matchLabels: {app: echo}}
action: CUSTOM  #! GAL3017
provider: {name: ext}
rules: [{}]
`), doc("RequestAuthentication", "echo-jwt", `
selector: {matchLabels: {app: echo}}
jwtRules:  #! GAL3017
- {issuer: issuer, jwksUri: "https://issuer.example.com/jwks"}
`))},
		{name: "JWT rules on Envoy workloads only", src: withBase(grpcServer, doc("AuthorizationPolicy", "reviews", `
selector: {matchLabels: {app: reviews}}
rules: [{from: [{source: {requestPrincipals: [issuer/alice]}}]}]
`))},
		{name: "a DENY rule shadowing an ALLOW rule", src: withBase(doc("AuthorizationPolicy", "allow", `
selector: {matchLabels: {app: reviews}}
rules:
- to: [{operation: {paths: [/admin/users], methods: [GET]}}]  #! GAL3018
- to: [{operation: {paths: [/api/*]}}]  #! GAL3018
- from: [{source: {namespaces: [other]}}]  #! GAL3018
  to: [{operation: {methods: [GET]}}]
`), doc("AuthorizationPolicy", "deny", `
selector: {matchLabels: {app: reviews, version: v1}}
action: DENY
rules:
- to: [{operation: {paths: [/admin/*]}}]
- from: [{source: {namespaces: [ns]}}]
  to: [{operation: {paths: [/api/v1/*]}}]
`))},
		{name: "DENY and ALLOW on different workloads", src: withBase(doc("AuthorizationPolicy", "allow", `
selector: {matchLabels: {app: reviews}}
rules: [{to: [{operation: {paths: [/admin/users]}}]}]
`), doc("AuthorizationPolicy", "deny", `
selector: {matchLabels: {app: productpage}}
action: DENY
rules: [{to: [{operation: {paths: [/admin/*]}}]}]
`), doc("AuthorizationPolicy", "other-paths", `
selector: {matchLabels: {app: reviews}}
action: DENY
rules: [{to: [{operation: {paths: [/private/*]}}]}]
`))},
		{name: "principals that match no identity", src: withBase(doc("AuthorizationPolicy", "p", `
selector: {matchLabels: {app: reviews}}
rules:
- from:
  - source:
      principals:
      - cluster.local/ns/ns/sa/client
      - sleep  #! GAL3019
      - cluster.local/ns/ns/sleep  #! GAL3019
      - other.domain/ns/ns/sa/client  #! GAL3019
      - cluster.local/ns/*
      notPrincipals: [default/sleep]  #! GAL3019
`))},
	}
}
