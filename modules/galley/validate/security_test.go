package validate_test

import "github.com/meshd/meshd/modules/galley/internal/galleytest"

var authorizationPolicyCases = []tc{
	// Valid.
	{"allow nothing", ap(``)},
	{"allow from principals", ap(`
selector: {matchLabels: {app: reviews}}
action: ALLOW
rules:
- from:
  - source: {principals: [cluster.local/ns/bookstore/sa/productpage, "*/ns/bookstore/sa/productpage"]}
  to:
  - operation: {methods: [GET], paths: ["/reviews/*", "/api/{*}/books", "/static/{**}"]}
  when:
  - key: request.auth.claims[groups]
    values: [readers]
`)},
	{"deny with ports", ap(`
action: DENY
rules:
- from: [{source: {notNamespaces: [bookstore]}}]
  to: [{operation: {ports: ["9080"], methods: [DELETE]}}]
`)},
	{"custom with provider", ap(`
action: CUSTOM
provider: {name: ext-authz}
rules:
- to: [{operation: {paths: ["/admin/*"]}}]
`)},
	{"audit", ap(`
action: AUDIT
rules: [{}]
`)},
	{"conditions", ap(`
rules:
- when:
  - {key: source.ip, values: [10.0.0.0/8, 192.168.1.1]}
  - {key: destination.port, notValues: ["22"]}
  - {key: "request.headers[x-token]", values: ["*"]}
  - {key: source.serviceAccount, values: [bookstore/reviews]}
  - {key: connection.sni, values: ["*.example.com"]}
`)},
	{"ip blocks and service accounts", ap(`
rules:
- from:
  - source: {ipBlocks: [10.0.0.0/8], remoteIpBlocks: ["2001:db8::/32"], serviceAccounts: [bookstore/reviews]}
`)},
	{"dry run", galleytest.DocMeta("security.istio.io/v1", "AuthorizationPolicy", `{name: ap, namespace: ns, annotations: {istio.io/dry-run: "true"}}`, `
action: DENY
rules:
- to: [{operation: {ports: ["8080"]}}]
`)},

	// Invalid.
	{"deny without rules", ap(`
action: DENY  #!-1 GAL2023
`)},
	{"custom without provider", ap(`
action: CUSTOM  #!-1 GAL2023
rules: [{}]
`)},
	{"custom without rules", ap(`
action: CUSTOM  #!-1 GAL2023
provider: {name: ext-authz}
`)},
	{"provider without custom", ap(`
action: ALLOW
provider: {name: ext-authz}  #! GAL2023
`)},
	{"custom with principals", ap(`
action: CUSTOM
provider: {name: ext-authz}
rules:
- from:
  - source:
      principals: [a/ns/b/sa/c]  #! GAL2023
`)},
	{"custom with identity condition", ap(`
action: CUSTOM
provider: {name: ext-authz}
rules:
- when:
  - key: source.principal  #! GAL2023
    values: [x]
`)},
	{"empty from", ap(`
rules:
- from: []  #! GAL2023
`)},
	{"from without source", ap(`
rules:
- from:
  - {}  #! GAL2023
`)},
	{"empty source", ap(`
rules:
- from:
  - source: {}  #! GAL2023
`)},
	{"service accounts with principals", ap(`
rules:
- from:
  - source:
      principals: [a/ns/b/sa/c]
      serviceAccounts: [b/c]  #! GAL2024
`)},
	{"invalid ip block", ap(`
rules:
- from:
  - source:
      ipBlocks:
      - 10.0.0.0/33  #! GAL2022
`)},
	{"principal with spiffe scheme", ap(`
rules:
- from:
  - source:
      principals:
      - spiffe://cluster.local/ns/a/sa/b  #! GAL2024
`)},
	{"principal with a middle wildcard", ap(`
rules:
- from:
  - source:
      principals:
      - cluster.local/ns/*/sa/b  #! GAL2024
`)},
	{"empty principal", ap(`
rules:
- from:
  - source:
      principals:
      - ""  #! GAL2023
`)},
	{"service account wildcard", ap(`
rules:
- from:
  - source:
      serviceAccounts:
      - bookstore/*  #! GAL2024
`)},
	{"trust domain with slash", ap(`
rules:
- from:
  - source:
      trustDomains:
      - cluster.local/ns  #! GAL2024
`)},
	{"empty operation", ap(`
rules:
- to:
  - operation: {}  #! GAL2023
`)},
	{"non-numeric port", ap(`
rules:
- to:
  - operation:
      ports:
      - http  #! GAL2004
`)},
	{"any-segment template not last", ap(`
rules:
- to:
  - operation:
      paths:
      - "/{**}/edit"  #! GAL2023
`)},
	{"unknown condition key", ap(`
rules:
- when:
  - key: request.header[x]  #! GAL2025
    values: [a]
`)},
	{"condition without values", ap(`
rules:
- when:
  - key: source.ip  #! GAL2025
`)},
	{"condition with a bad port", ap(`
rules:
- when:
  - key: destination.port
    values:
    - "99999"  #! GAL2025
`)},
	{"condition with a bad ip", ap(`
rules:
- when:
  - key: remote.ip
    values:
    - 300.1.1.1  #! GAL2025
`)},
	{"condition header without name", ap(`
rules:
- when:
  - key: request.headers  #! GAL2025
    values: [a]
`)},
	{"destination labels condition", ap(`
rules:
- when:
  - key: destination.labels[app]  #! GAL2025
    values: [a]
`)},
	{"deny with http attributes only", ap(`
action: DENY
rules:
- to:  #! GAL2038
  - operation: {methods: [DELETE]}
`)},
	{"selector and target ref", ap(`
selector: {matchLabels: {app: x}}  #! GAL2013
targetRef: {kind: Service, name: x}
`)},
	{"target ref to a deployment", ap(`
targetRef:
  group: apps
  kind: Deployment  #! GAL2013
  name: x
`)},
	{"dry run with custom", galleytest.DocMeta("security.istio.io/v1", "AuthorizationPolicy", `{name: ap, namespace: ns, annotations: {istio.io/dry-run: "true"}}  #! GAL2001`, `
action: CUSTOM
provider: {name: x}
rules: [{}]
`)},
	{"unknown action", ap(`
action: PERMIT  #! GAL1007
`)},
}

var requestAuthenticationCases = []tc{
	// Valid.
	{"issuer and jwks uri", ra(`
selector: {matchLabels: {app: productpage}}
jwtRules:
- issuer: https://auth.example.com
  jwksUri: https://auth.example.com/.well-known/jwks.json
  audiences: [bookstore]
  forwardOriginalToken: true
  timeout: 5s
`)},
	{"inline public key", ra(`
jwtRules:
- issuer: testing@secure.istio.io
  jwks: '{"keys":[{"kty":"RSA","e":"AQAB","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX"}]}'
  fromHeaders: [{name: Authorization, prefix: "Bearer "}]
  fromParams: [token]
  outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
`)},
	{"target ref", ra(`
targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: ingress}
jwtRules: [{issuer: https://auth.example.com}]
`)},

	// Invalid.
	{"no issuer or jwks uri", ra(`
jwtRules:
- audiences: [a]  #! GAL2026
`)},
	{"ftp jwks uri", ra(`
jwtRules:
- issuer: x
  jwksUri: ftp://auth.example.com/keys  #! GAL2026
`)},
	{"plain http jwks uri", ra(`
jwtRules:
- issuer: x
  jwksUri: http://auth.example.com/keys  #! GAL2038
`)},
	{"jwks uri without host", ra(`
jwtRules:
- issuer: x
  jwksUri: "https:///keys"  #! GAL2026
`)},
	{"jwks not json", ra(`
jwtRules:
- issuer: x
  jwks: "not json"  #! GAL2026
`)},
	{"jwks without keys", ra(`
jwtRules:
- issuer: x
  jwks: '{"keys": []}'  #! GAL2026
`)},
	{"jwks with private key", ra(`
jwtRules:
- issuer: x
  jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"secret"}]}'  #! GAL2026
`)},
	{"jwks and jwks uri", ra(`
jwtRules:
- issuer: x
  jwksUri: https://auth.example.com/keys  #! GAL2026
  jwks: '{"keys":[{"kty":"RSA","e":"AQAB","n":"abc"}]}'
`)},
	{"empty audience", ra(`
jwtRules:
- issuer: x
  audiences:
  - ""  #! GAL2026
`)},
	{"header location without name", ra(`
jwtRules:
- issuer: x
  fromHeaders:
  - prefix: "Bearer "  #! GAL2026
`)},
	{"invalid output header", ra(`
jwtRules:
- issuer: x
  outputClaimToHeaders:
  - header: "x jwt"  #! GAL2011
    claim: sub
`)},
	{"zero timeout", ra(`
jwtRules:
- issuer: x
  timeout: 0s  #! GAL2007
`)},
	{"empty query parameter", ra(`
jwtRules:
- issuer: x
  fromParams:
  - ""  #! GAL2026
`)},
}

// metadataCases check names, namespaces, labels and annotations, using
// VirtualServices as the carrier.
var metadataCases = []tc{
	{"labels and annotations", galleytest.DocMeta("networking.istio.io/v1", "VirtualService",
		`{name: reviews.v1, namespace: bookstore, labels: {app.kubernetes.io/name: reviews, version: v1}, annotations: {meshd.io/owner: team-books}}`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"uppercase name", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: Reviews, namespace: ns}  #! GAL2001`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"invalid namespace", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: reviews, namespace: Bad_NS}  #! GAL2001`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"invalid label key", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: reviews, namespace: ns, labels: {"-app": x}}  #! GAL2001`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"label value too long", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: reviews, namespace: ns, labels: {app: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}}  #! GAL2001`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"invalid annotation key", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: reviews, namespace: ns, annotations: {"bad key": x}}  #! GAL2001`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
	{"dry run on a virtual service", galleytest.DocMeta("networking.istio.io/v1", "VirtualService", `{name: reviews, namespace: ns, annotations: {istio.io/dry-run: "true"}}  #! GAL2001`, `
hosts: [reviews]
http: [{route: [{destination: {host: reviews}}]}]
`)},
}
