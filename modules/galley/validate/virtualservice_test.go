package validate_test

var virtualServiceCases = []tc{
	// Valid.
	{"simple route", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: reviews}
`)},
	{"canary with match, retries, timeout and headers", vs(`
hosts: [reviews.ns.svc.cluster.local]
http:
- name: canary
  match:
  - uri: {prefix: /api}
    headers:
      x-user: {exact: jason}
      ":authority": {prefix: books}
    queryParams:
      debug: {regex: "^(true|1)$"}
  route:
  - destination: {host: reviews, subset: v1, port: {number: 9080}}
    weight: 75
  - destination: {host: reviews, subset: v2}
    weight: 25
  timeout: 2s
  retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,503"}
  headers:
    request:
      set: {x-forwarded-by: meshd, x-pct: "100%%", host: reviews.internal}
      remove: [x-debug]
    response:
      add: {x-served-by: "%HOSTNAME%", x-start: "%START_TIME(%s)%"}
`)},
	{"gateway-bound wildcard host", vs(`
hosts: ["*"]
gateways: [istio-system/ingress]
http:
- route:
  - destination: {host: productpage}
`)},
	{"IP address host", vs(`
hosts: [10.0.0.1]
http:
- route:
  - destination: {host: reviews}
`)},
	{"delegate virtual service", vs(`
http:
- match: [{uri: {prefix: /reviews}}]
  route: [{destination: {host: reviews}}]
`)},
	{"root route delegating", vs(`
hosts: [books.example.com]
gateways: [gw]
http:
- match: [{uri: {prefix: /reviews}}]
  delegate: {name: reviews-delegate, namespace: other}
`)},
	{"tcp route", vs(`
hosts: [db.example.com]
tcp:
- match: [{port: 3306, destinationSubnets: [10.0.0.0/8], sourceSubnet: 192.168.0.0/16}]
  route: [{destination: {host: db.example.com, port: {number: 3306}}}]
`)},
	{"tls route", vs(`
hosts: ["*.example.com"]
tls:
- match: [{sniHosts: [api.example.com], port: 443}]
  route: [{destination: {host: api.example.com}}]
`)},
	{"redirect", vs(`
hosts: [old.example.com]
gateways: [gw]
http:
- redirect: {uri: /new, authority: new.example.com, redirectCode: 301, scheme: https, port: 8443}
`)},
	{"prefix rewrite redirect", vs(`
hosts: [old.example.com]
http:
- match: [{uri: {prefix: /v1}}]
  redirect: {prefixRewrite: /v2}
`)},
	{"direct response", vs(`
hosts: [reviews]
http:
- directResponse: {status: 404, body: {string: "not here"}}
`)},
	{"fault injection", vs(`
hosts: [ratings]
http:
- fault:
    delay: {fixedDelay: 5s, percentage: {value: 10}}
    abort: {httpStatus: 500, percentage: {value: 0.1}}
  route: [{destination: {host: ratings}}]
`)},
	{"grpc abort", vs(`
hosts: [ratings]
http:
- fault: {abort: {grpcStatus: UNAVAILABLE}}
  route: [{destination: {host: ratings}}]
`)},
	{"cors policy", vs(`
hosts: [api.example.com]
http:
- corsPolicy:
    allowOrigins: [{exact: "https://a.example.com"}, {regex: "https://.*\\.example\\.com"}]
    allowMethods: [GET, POST]
    allowHeaders: [content-type, "*"]
    exposeHeaders: [x-request-id]
    maxAge: 24h
    allowCredentials: true
  route: [{destination: {host: api.example.com}}]
`)},
	{"mirrors", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirrors: [{destination: {host: shadow}, percentage: {value: 5}}]
`)},
	{"mirror with percentage", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirror: {host: shadow, subset: v1}
  mirrorPercentage: {value: 50}
`)},
	{"regex rewrite", vs(`
hosts: [reviews]
http:
- rewrite: {uriRegexRewrite: {match: "^/v1/(.*)", rewrite: "/\\1"}}
  route: [{destination: {host: reviews}}]
`)},
	{"export to own and other namespace", vs(`
hosts: [reviews]
exportTo: [".", other]
http:
- route: [{destination: {host: reviews}}]
`)},
	{"jwt claim routing on a gateway", vs(`
hosts: [api.example.com]
gateways: [gw]
http:
- match:
  - headers:
      "@request.auth.claims.groups": {exact: admin}
  route: [{destination: {host: admin}}]
`)},
	{"without headers presence", vs(`
hosts: [reviews]
http:
- match: [{withoutHeaders: {x-canary: {regex: "*"}}}]
  route: [{destination: {host: reviews}}]
`)},

	// Hosts and routes.
	{"no routes", vs(`
hosts: [reviews]  #!-1 GAL2002
`)},
	{"invalid host", vs(`
hosts: [bad_host]  #! GAL2003
http:
- route: [{destination: {host: reviews}}]
`)},
	{"wildcard host on the mesh", vs(`
hosts: ["*"]  #! GAL2003
http:
- route: [{destination: {host: reviews}}]
`)},
	{"partial wildcard host", vs(`
hosts: [re*views.example.com]  #! GAL2003
http:
- route: [{destination: {host: reviews}}]
`)},
	{"wildcard not in first label", vs(`
hosts: [api.*.example.com]  #! GAL2003
http:
- route: [{destination: {host: reviews}}]
`)},
	{"numeric top-level domain", vs(`
hosts: [reviews.123]  #! GAL2003
http:
- route: [{destination: {host: reviews}}]
`)},
	{"overlapping hosts", vs(`
hosts:
- api.example.com
- "*.example.com"  #! GAL2036
http:
- route: [{destination: {host: reviews}}]
`)},
	{"route without action", vs(`
hosts: [reviews]
http:
- name: nothing  #! GAL2002
`)},
	{"route and redirect", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]  #! GAL2030
  redirect: {uri: /x}
`)},
	{"direct response and route", vs(`
hosts: [reviews]
http:
- directResponse: {status: 200}
  route: [{destination: {host: reviews}}]  #! GAL2030
`)},
	{"redirect and fault", vs(`
hosts: [reviews]
http:
- redirect: {uri: /x}
  fault: {abort: {httpStatus: 500}}  #! GAL2030
`)},
	{"mirror and mirrors", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirror: {host: shadow}
  mirrors: [{destination: {host: shadow2}}]  #! GAL2030
`)},

	// Destinations and weights.
	{"negative weight", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: reviews, subset: v1}
    weight: -10  #! GAL2009
  - destination: {host: reviews, subset: v2}
    weight: 110
`)},
	{"all weights zero", vs(`
hosts: [reviews]
http:
- route:  #! GAL2009
  - destination: {host: reviews, subset: v1}
  - destination: {host: reviews, subset: v2}
`)},
	{"weights not summing to 100", vs(`
hosts: [reviews]
http:
- route:  #! GAL2010
  - destination: {host: reviews, subset: v1}
    weight: 60
  - destination: {host: reviews, subset: v2}
    weight: 30
`)},
	{"tcp weights not summing to 100", vs(`
hosts: [db.example.com]
tcp:
- route:  #! GAL2010
  - {destination: {host: db1.example.com}, weight: 50}
  - {destination: {host: db2.example.com}, weight: 40}
`)},
	{"invalid subset name", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: reviews, subset: v_1}  #! GAL2012
`)},
	{"destination port zero", vs(`
hosts: [reviews]
http:
- route:
  - destination:
      host: reviews
      port: {number: 0}  #! GAL2004
`)},
	{"destination without host", vs(`
hosts: [reviews]
http:
- route:
  - destination: {subset: v1}  #! GAL2002
`)},
	{"destination host wildcard", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: "*"}  #! GAL2003
`)},
	{"destination host invalid", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: "reviews..ns"}  #! GAL2003
`)},

	// Durations and retries.
	{"zero timeout", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  timeout: 0s  #! GAL2007
`)},
	{"sub-millisecond timeout", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  timeout: 1500us  #! GAL2007
`)},
	{"negative timeout", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  timeout: -1s  #! GAL2007
`)},
	{"negative retry attempts", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  retries:
    attempts: -1  #! GAL2016
`)},
	{"retry settings with zero attempts", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  retries: {attempts: 0, perTryTimeout: 1s}  #! GAL2016
`)},
	{"unknown retryOn condition", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  retries:
    attempts: 2
    retryOn: 5xx,bogus  #! GAL2016
`)},
	{"retry per-try timeout too short", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  retries:
    attempts: 2
    perTryTimeout: 100us  #! GAL2007
`)},

	// Matches.
	{"invalid uri regex", vs(`
hosts: [reviews]
http:
- match:
  - uri:
      regex: "(unclosed"  #! GAL2006
  route: [{destination: {host: reviews}}]
`)},
	{"lookahead regex", vs(`
hosts: [reviews]
http:
- match:
  - headers:
      x-id:
        regex: "(?=abc)"  #! GAL2006
  route: [{destination: {host: reviews}}]
`)},
	{"invalid header name", vs(`
hosts: [reviews]
http:
- match:
  - headers:
      "bad header": {exact: x}  #! GAL2011
  route: [{destination: {host: reviews}}]
`)},
	{"empty header prefix", vs(`
hosts: [reviews]
http:
- match:
  - headers:
      x-a:
        prefix: ""  #! GAL2029
  route: [{destination: {host: reviews}}]
`)},
	{"empty method prefix", vs(`
hosts: [reviews]
http:
- match:
  - method:
      prefix: ""  #! GAL2029
  route: [{destination: {host: reviews}}]
`)},
	{"jwt claim routing on the mesh", vs(`
hosts: [reviews]
http:
- match:
  - headers:
      "@request.auth.claims.group": {exact: a}  #! GAL2011
  route: [{destination: {host: reviews}}]
`)},
	{"match port out of range", vs(`
hosts: [reviews]
http:
- match:
  - port: 70000  #! GAL2004
  route: [{destination: {host: reviews}}]
`)},
	{"invalid source label", vs(`
hosts: [reviews]
http:
- match:
  - sourceLabels:
      "bad key!": x  #! GAL2013
  route: [{destination: {host: reviews}}]
`)},
	{"invalid source namespace", vs(`
hosts: [reviews]
http:
- match:
  - sourceNamespace: Bad_NS  #! GAL2029
  route: [{destination: {host: reviews}}]
`)},
	{"invalid gateway name", vs(`
hosts: [reviews]
gateways:
- ns/bad_gw  #! GAL2029
http:
- route: [{destination: {host: reviews}}]
`)},
	{"gateway reference missing name", vs(`
hosts: [reviews]
gateways:
- "ns/"  #! GAL2029
http:
- route: [{destination: {host: reviews}}]
`)},
	{"legacy gateway reference", vs(`
hosts: [reviews]
gateways:
- gw.istio-system  #! GAL2037
http:
- route: [{destination: {host: reviews}}]
`)},

	// Header manipulation.
	{"set pseudo header", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  headers:
    request:
      set:
        ":path": /x  #! GAL2011
`)},
	{"remove host header", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  headers:
    request:
      remove:
      - host  #! GAL2011
`)},
	{"unescaped percent in header value", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  headers:
    response:
      set:
        x-discount: "50% off"  #! GAL2011
`)},
	{"authority rewritten twice", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  rewrite: {authority: a.example.com}
  headers:
    request:  #! GAL2030
      set: {":authority": b.example.com}
`)},
	{"destination header operation", vs(`
hosts: [reviews]
http:
- route:
  - destination: {host: reviews}
    headers:
      response:
        add:
          ":status": "200"  #! GAL2011
`)},

	// CORS.
	{"cors unknown method", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  corsPolicy:
    allowMethods: [GET, FETCH]  #! GAL2019
`)},
	{"cors empty origin", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  corsPolicy:
    allowOrigins:
    - {}  #! GAL2019
`)},
	{"cors max age with fraction", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  corsPolicy:
    maxAge: 1.5s  #! GAL2019
`)},
	{"cors invalid header", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  corsPolicy:
    allowHeaders:
    - "x header"  #! GAL2019
`)},
	{"cors deprecated allowOrigin", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  corsPolicy:
    allowOrigin: ["*"]  #! GAL2037
`)},
	{"cors invalid origin regex", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  corsPolicy:
    allowOrigins:
    - regex: "[z-a]"  #! GAL2006
`)},

	// Fault injection.
	{"empty fault", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault: {}  #! GAL2017
`)},
	{"abort status out of range", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    abort:
      httpStatus: 600  #! GAL2017
`)},
	{"abort unknown grpc status", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    abort:
      grpcStatus: NOPE  #! GAL2017
`)},
	{"abort without error type", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    abort:  #! GAL2017
      percentage: {value: 10}
`)},
	{"abort http2 error", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    abort:
      http2Error: REFUSED_STREAM  #! GAL2017
`)},
	{"delay percentage out of range", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    delay:
      fixedDelay: 1s
      percentage:
        value: 150  #! GAL2008
`)},
	{"exponential delay", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    delay:
      exponentialDelay: 1s  #! GAL2017
`)},
	{"delay without fixed delay", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    delay:  #! GAL2017
      percentage: {value: 5}
`)},
	{"delay deprecated percent", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  fault:
    delay:
      fixedDelay: 1s
      percent: 10  #! GAL2037
`)},

	// Mirrors.
	{"mirror percentage out of range", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirror: {host: shadow}
  mirrorPercentage:
    value: 150  #! GAL2018
`)},
	{"mirror host wildcard", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirror:
    host: "*"  #! GAL2003
`)},
	{"mirrors without destination", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirrors:
  - percentage: {value: 5}  #! GAL2018
`)},
	{"deprecated mirror percent", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  mirror: {host: shadow}
  mirrorPercent: 50  #! GAL2037
`)},

	// Redirects, rewrites, direct responses.
	{"empty redirect", vs(`
hosts: [reviews]
http:
- redirect: {}  #! GAL2031
`)},
	{"redirect uri and prefix rewrite", vs(`
hosts: [reviews]
http:
- redirect: {uri: /a, prefixRewrite: /b}  #! GAL2031
`)},
	{"redirect code not 3xx", vs(`
hosts: [reviews]
http:
- redirect:
    uri: /a
    redirectCode: 200  #! GAL2031
`)},
	{"redirect scheme", vs(`
hosts: [reviews]
http:
- redirect:
    scheme: ftp  #! GAL2031
`)},
	{"prefix rewrite with exact match", vs(`
hosts: [reviews]
http:
- match: [{uri: {exact: /v1}}]
  redirect:
    prefixRewrite: /v2  #! GAL2031
`)},
	{"direct response status", vs(`
hosts: [reviews]
http:
- directResponse:
    status: 700  #! GAL2031
`)},
	{"empty rewrite", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  rewrite: {}  #! GAL2031
`)},
	{"rewrite uri and regex", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  rewrite:  #! GAL2031
    uri: /a
    uriRegexRewrite: {match: "^/b", rewrite: /c}
`)},
	{"regex rewrite without rewrite", vs(`
hosts: [reviews]
http:
- route: [{destination: {host: reviews}}]
  rewrite:
    uriRegexRewrite: {match: "^/b"}  #! GAL2031
`)},

	// Delegation.
	{"delegate with gateways", vs(`
gateways: [gw]  #! GAL2020
http:
- route: [{destination: {host: reviews}}]
`)},
	{"delegate with tcp routes", vs(`
tcp:  #! GAL2020
- route: [{destination: {host: db.example.com}}]
`)},
	{"root route with route", vs(`
hosts: [reviews]
http:
- delegate: {name: other}
  route: [{destination: {host: reviews}}]  #! GAL2020
`)},
	{"delegate inside delegate", vs(`
http:
- delegate: {name: other}  #! GAL2020
`)},
	{"delegate without name", vs(`
hosts: [reviews]
http:
- delegate: {namespace: other}  #! GAL2020
`)},

	// TLS and TCP routes.
	{"tls route without match", vs(`
hosts: [api.example.com]
tls:
- route: [{destination: {host: api.example.com}}]  #! GAL2002
`)},
	{"sni host outside virtual service hosts", vs(`
hosts: [api.example.com]
tls:
- match:
  - sniHosts:
    - other.example.com  #! GAL2003
  route: [{destination: {host: api.example.com}}]
`)},
	{"sni host is an IP", vs(`
hosts: [api.example.com]
tls:
- match:
  - sniHosts:
    - 10.0.0.1  #! GAL2038
  route: [{destination: {host: api.example.com}}]
`)},
	{"tcp route without destinations", vs(`
hosts: [db.example.com]
tcp:
- match: [{port: 3306}]  #! GAL2002
`)},
	{"tcp invalid destination subnet", vs(`
hosts: [db.example.com]
tcp:
- match:
  - destinationSubnets:
    - 10.0.0.0/40  #! GAL2022
  route: [{destination: {host: db.example.com}}]
`)},

	// exportTo.
	{"exportTo duplicate of own namespace", vs(`
hosts: [reviews]
exportTo:
- "."
- ns  #! GAL2033
http:
- route: [{destination: {host: reviews}}]
`)},
	{"exportTo none on a virtual service", vs(`
hosts: [reviews]
exportTo:
- "~"  #! GAL2033
http:
- route: [{destination: {host: reviews}}]
`)},
	{"exportTo public with others", vs(`
hosts: [reviews]
exportTo: ["*", other]  #! GAL2033
http:
- route: [{destination: {host: reviews}}]
`)},
}
