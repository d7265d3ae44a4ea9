package validate_test

var serviceEntryCases = []tc{
	// Valid.
	{"static endpoints", se(`
hosts: [reviews.bookstore.svc.cluster.local]
location: MESH_INTERNAL
resolution: STATIC
ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 19080}]
endpoints:
- address: 127.0.0.1
  ports: {http: 19081}
  labels: {version: v1}
- address: unix:///var/run/reviews.sock
`)},
	{"external dns", se(`
hosts: [api.example.com]
location: MESH_EXTERNAL
resolution: DNS
ports: [{number: 443, name: tls, protocol: TLS}]
`)},
	{"workload selector", se(`
hosts: [ratings.bookstore.svc.cluster.local]
location: MESH_INTERNAL
resolution: STATIC
ports: [{number: 9090, name: grpc, protocol: GRPC}]
workloadSelector: {labels: {app: ratings}}
`)},
	{"none with cidr", se(`
hosts: [legacy.internal]
addresses: [10.10.0.0/16]
resolution: NONE
ports: [{number: 5432, name: postgres, protocol: TCP}]
`)},
	{"dns round robin", se(`
hosts: [db.example.com]
resolution: DNS_ROUND_ROBIN
ports: [{number: 443, name: https, protocol: HTTPS}]
endpoints: [{address: db-lb.example.com}]
`)},
	{"dynamic dns", se(`
hosts: ["*.googleapis.com"]
resolution: DYNAMIC_DNS
ports: [{number: 443, name: tls, protocol: TLS}]
`)},
	{"exported to no one", se(`
hosts: [private.example.com]
resolution: DNS
exportTo: ["~"]
ports: [{number: 80, name: http, protocol: HTTP}]
`)},

	// Invalid.
	{"no hosts", se(`
resolution: DNS  #!-1 GAL2002
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"wildcard-only host", se(`
hosts: ["*"]  #! GAL2003
resolution: NONE
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"invalid host", se(`
hosts: [api_v1.example.com]  #! GAL2003
resolution: NONE
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"partial wildcard host", se(`
hosts: ["*api.example.com"]  #! GAL2003
resolution: NONE
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"invalid address", se(`
hosts: [legacy.internal]
addresses: [10.0.0.300]  #! GAL2022
resolution: NONE
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"cidr with dns resolution", se(`
hosts: [legacy.internal]
addresses: [10.0.0.0/24]  #! GAL2021
resolution: DNS
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"duplicate port name", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 80, name: http, protocol: HTTP}
- {number: 8080, name: http, protocol: HTTP}  #! GAL2036
`)},
	{"duplicate port number", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 80, name: http, protocol: HTTP}
- {number: 80, name: web, protocol: HTTP}  #! GAL2036
`)},
	{"invalid port name", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 80, name: http_1, protocol: HTTP}  #! GAL2005
`)},
	{"unknown protocol", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 80, name: http, protocol: QUIC}  #! GAL2005
`)},
	{"port without name", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 80, protocol: HTTP}  #! GAL2005
`)},
	{"port zero", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 0, name: http, protocol: HTTP}  #! GAL2004
`)},
	{"target port out of range", se(`
hosts: [api.example.com]
resolution: DNS
ports:
- {number: 80, name: http, protocol: HTTP, targetPort: 70000}  #! GAL2004
`)},
	{"none with endpoints", se(`
hosts: [api.example.com]
resolution: NONE
ports: [{number: 80, name: http, protocol: HTTP}]
endpoints: [{address: 10.0.0.1}]  #! GAL2021
`)},
	{"static endpoint with dns name", se(`
hosts: [api.example.com]
resolution: STATIC
ports: [{number: 80, name: http, protocol: HTTP}]
endpoints:
- address: backend.example.com  #! GAL2022
`)},
	{"endpoint port not declared", se(`
hosts: [api.example.com]
resolution: STATIC
ports: [{number: 80, name: http, protocol: HTTP}]
endpoints:
- address: 10.0.0.1
  ports:
    https: 8443  #! GAL2035
`)},
	{"round robin with two endpoints", se(`
hosts: [api.example.com]
resolution: DNS_ROUND_ROBIN
ports: [{number: 80, name: http, protocol: HTTP}]
endpoints: [{address: a.example.com}, {address: b.example.com}]  #! GAL2021
`)},
	{"dns without endpoints and a wildcard host", se(`
hosts: ["*.example.com"]  #! GAL2021
resolution: DNS
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"dynamic dns without wildcard", se(`
hosts: [api.example.com]  #! GAL2021
resolution: DYNAMIC_DNS
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"selector and endpoints", se(`
hosts: [api.example.com]
resolution: STATIC
ports: [{number: 80, name: http, protocol: HTTP}]
workloadSelector: {labels: {app: api}}  #! GAL2021
endpoints: [{address: 10.0.0.1}]
`)},
	{"several hosts on a tcp port", se(`
hosts: [a.example.com, b.example.com]
resolution: DNS
ports:
- {number: 5432, name: postgres, protocol: TCP}  #! GAL2021
`)},
	{"static without endpoints", se(`
hosts: [api.example.com]
resolution: STATIC  #! GAL2021
ports: [{number: 80, name: http, protocol: HTTP}]
`)},
	{"exported to no one and someone", se(`
hosts: [api.example.com]
resolution: DNS
ports: [{number: 80, name: http, protocol: HTTP}]
exportTo: ["~", other]  #! GAL2033
`)},
}

var workloadEntryCases = []tc{
	{"ip address", we(`
address: 10.0.0.5
ports: {http: 8080}
labels: {app: reviews, version: v1}
serviceAccount: bookstore-reviews
locality: us-west/zone1
weight: 10
`)},
	{"dns address", we(`
address: vm1.example.com
labels: {app: legacy}
`)},
	{"unix socket", we(`
address: unix:///var/run/app.sock
`)},
	{"missing address", we(`
labels: {app: reviews}  #!-1 GAL2002
`)},
	{"invalid address", we(`
address: not_valid!  #! GAL2022
`)},
	{"invalid port name", we(`
address: 10.0.0.5
ports:
  http_alt: 8080  #! GAL2005
`)},
	{"port zero", we(`
address: 10.0.0.5
ports:
  http: 0  #! GAL2004
`)},
	{"invalid label", we(`
address: 10.0.0.5
labels:
  app: "reviews v1"  #! GAL2035
`)},
	{"unix socket with ports", we(`
address: unix:///var/run/app.sock
ports: {http: 8080}  #! GAL2035
`)},
	{"invalid service account", we(`
address: 10.0.0.5
serviceAccount: Bad SA  #! GAL2035
`)},
	{"network without address", we(`
network: vpc-2  #!-1 GAL2038
`)},
}

var workloadGroupCases = []tc{
	{"group with probe", wg(`
metadata:
  labels: {app: reviews}
template:
  ports: {http: 8080}
  serviceAccount: bookstore-reviews
  network: vpc-1
probe:
  periodSeconds: 5
  initialDelaySeconds: 1
  httpGet: {path: /ready, port: 8080, scheme: HTTPS, httpHeaders: [{name: x-probe, value: "1"}]}
`)},
	{"tcp probe", wg(`
template: {ports: {grpc: 9090}}
probe: {tcpSocket: {port: 9090}}
`)},
	{"no template", wg(`
metadata: {labels: {app: reviews}}  #!-1 GAL2002
`)},
	{"negative probe period", wg(`
template: {}
probe:
  periodSeconds: -1  #! GAL2035
  tcpSocket: {port: 80}
`)},
	{"probe port zero", wg(`
template: {}
probe:
  httpGet:
    port: 0  #! GAL2004
`)},
	{"probe scheme", wg(`
template: {}
probe:
  httpGet:
    port: 80
    scheme: FTP  #! GAL2035
`)},
	{"exec probe without command", wg(`
template: {}
probe:
  exec: {}  #! GAL2002
`)},
	{"probe without method", wg(`
template: {}
probe: {periodSeconds: 5}  #! GAL2002
`)},
	{"template with address", wg(`
template:
  address: 10.0.0.1  #! GAL2038
`)},
	{"invalid metadata label", wg(`
template: {}
metadata:
  labels:
    "-app": x  #! GAL2035
`)},
	{"invalid probe header", wg(`
template: {}
probe:
  httpGet:
    port: 80
    httpHeaders:
    - name: x_probe  #! GAL2011
`)},
}
