package validate_test

var sidecarCases = []tc{
	// Valid.
	{"namespace default", sc(`
egress:
- hosts: ["./*", "istio-system/*"]
`)},
	{"ingress with default endpoint", sc(`
workloadSelector: {labels: {app: reviews}}
ingress:
- port: {number: 9080, protocol: HTTP, name: http}
  defaultEndpoint: 127.0.0.1:19080
  connectionPool: {http: {http1MaxPendingRequests: 100}}
egress:
- port: {number: 3306, protocol: MYSQL, name: mysql}
  bind: 127.0.0.1
  hosts: ["*/mysql.example.com"]
- hosts: ["~/*"]
`)},
	{"registry only", sc(`
outboundTrafficPolicy: {mode: REGISTRY_ONLY}
`)},
	{"egress proxy", sc(`
outboundTrafficPolicy:
  mode: ALLOW_ANY
  egressProxy: {host: proxy.example.com, port: {number: 3128}}
`)},
	{"unix socket egress", sc(`
egress:
- port: {number: 0, protocol: HTTP, name: uds}
  bind: unix:///var/run/egress.sock
  captureMode: NONE
  hosts: ["./*"]
`)},
	{"ingress tls", sc(`
ingress:
- port: {number: 9443, protocol: HTTPS, name: https}
  defaultEndpoint: 127.0.0.1:9080
  tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
`)},

	// Invalid.
	{"empty sidecar", sc(`
workloadSelector: {labels: {app: x}}  #!-1 GAL2002
`)},
	{"egress host without namespace", sc(`
egress:
- hosts:
  - reviews.ns.svc.cluster.local  #! GAL2003
`)},
	{"egress short host", sc(`
egress:
- hosts:
  - ./reviews  #! GAL2003
`)},
	{"egress without hosts", sc(`
egress:
- port: {number: 80, protocol: HTTP, name: http}  #! GAL2002
`)},
	{"catch-all egress not last", sc(`
egress:
- hosts: ["./*"]  #! GAL2034
- port: {number: 80, protocol: HTTP, name: http}
  hosts: ["*/*"]
`)},
	{"duplicate egress port", sc(`
egress:
- port: {number: 80, protocol: HTTP, name: http}
  hosts: ["./*"]
- port: {number: 80, protocol: HTTP, name: web}  #! GAL2036
  hosts: ["ns2/*"]
`)},
	{"port zero without socket", sc(`
egress:
- port: {number: 0, protocol: HTTP, name: http}
  bind: 127.0.0.1  #! GAL2034
  hosts: ["./*"]
`)},
	{"ingress without port", sc(`
ingress:
- defaultEndpoint: 127.0.0.1:8080  #! GAL2002
`)},
	{"default endpoint on another host", sc(`
ingress:
- port: {number: 9080, protocol: HTTP, name: http}
  defaultEndpoint: 10.1.1.1:8080  #! GAL2034
`)},
	{"default endpoint port zero", sc(`
ingress:
- port: {number: 9080, protocol: HTTP, name: http}
  defaultEndpoint: 127.0.0.1:0  #! GAL2004
`)},
	{"ingress istio mutual", sc(`
ingress:
- port: {number: 9443, protocol: HTTPS, name: https}
  tls:
    mode: ISTIO_MUTUAL  #! GAL2015
`)},
	{"ingress tls on an http port", sc(`
ingress:
- port: {number: 9080, protocol: HTTP, name: http}
  tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}  #! GAL2015
`)},
	{"egress proxy with registry only", sc(`
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
  egressProxy: {host: proxy.example.com, port: {number: 3128}}  #! GAL2034
`)},
	{"wildcard selector", sc(`
workloadSelector:
  labels:
    app: "*"  #! GAL2013
egress: [{hosts: ["./*"]}]
`)},
	{"selector without labels", sc(`
workloadSelector: {}  #! GAL2014
egress: [{hosts: ["./*"]}]
`)},
	{"duplicated egress host", sc(`
egress:
- hosts:
  - "./*"
  - ./reviews.ns.svc.cluster.local  #! GAL2036
`)},
	{"invalid ingress protocol", sc(`
ingress:
- port:
    number: 9080
    protocol: HTTP9  #! GAL2005
    name: http
`)},
}

var peerAuthenticationCases = []tc{
	{"namespace strict", pa(`
mtls: {mode: STRICT}
`)},
	{"workload with port exceptions", pa(`
selector: {matchLabels: {app: reviews}}
mtls: {mode: STRICT}
portLevelMtls:
  9090: {mode: PERMISSIVE}
`)},
	{"inherit", pa(``)},
	{"port level without selector", pa(`
mtls: {mode: STRICT}
portLevelMtls:  #! GAL2027
  8080: {mode: DISABLE}
`)},
	{"port zero", pa(`
selector: {matchLabels: {app: reviews}}
portLevelMtls:
  0: {mode: DISABLE}  #! GAL2004
`)},
	{"empty port level", pa(`
selector: {matchLabels: {app: reviews}}
portLevelMtls: {}  #! GAL2027
`)},
	{"unknown mode", pa(`
mtls:
  mode: STRICTER  #! GAL1007
`)},
	{"selector without labels", pa(`
selector: {}  #! GAL2014
mtls: {mode: STRICT}
`)},
	{"wildcard selector", pa(`
selector:
  matchLabels:
    version: "v*"  #! GAL2013
`)},
	{"port out of range", pa(`
selector: {matchLabels: {app: reviews}}
portLevelMtls:
  70000: {mode: DISABLE}  #! GAL2004
`)},
}
