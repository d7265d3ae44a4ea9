package validate_test

var destinationRuleCases = []tc{
	// Valid.
	{"full traffic policy", dr(`
host: reviews
trafficPolicy:
  loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 30s, minimumPercent: 10, aggression: 1.5}}
  connectionPool:
    tcp: {maxConnections: 100, connectTimeout: 30ms, idleTimeout: 0s, tcpKeepalive: {time: 7200s, interval: 75s}}
    http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 1, idleTimeout: 1h, http2KeepAlive: {interval: 10s, timeout: 3s}}
  outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100}
  tls: {mode: ISTIO_MUTUAL}
  portLevelSettings:
  - port: {number: 80}
    loadBalancer: {simple: ROUND_ROBIN}
subsets:
- name: v1
  labels: {version: v1}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
exportTo: ["*"]
`)},
	{"consistent hash cookie and maglev", dr(`
host: reviews
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie: {name: user, ttl: 0s}
      maglev: {tableSize: 65537}
`)},
	{"locality distribution", dr(`
host: reviews
trafficPolicy:
  outlierDetection: {consecutive5xxErrors: 5}
  loadBalancer:
    localityLbSetting:
      distribute:
      - from: us-west/zone1/*
        to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}
`)},
	{"locality failover", dr(`
host: reviews
trafficPolicy:
  outlierDetection: {consecutive5xxErrors: 5}
  loadBalancer:
    localityLbSetting:
      failover: [{from: us-east, to: us-west}]
`)},
	{"simple tls with credential", dr(`
host: api.example.com
trafficPolicy:
  tls: {mode: SIMPLE, credentialName: api-ca, sni: api.example.com, subjectAltNames: [api.example.com]}
`)},
	{"mutual tls with files", dr(`
host: api.example.com
trafficPolicy:
  tls: {mode: MUTUAL, clientCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem, caCertificates: /etc/certs/ca.pem}
`)},
	{"workload selector scoped to own namespace", dr(`
host: reviews
workloadSelector: {matchLabels: {app: productpage}}
exportTo: ["."]
trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`)},
	{"tunnel", dr(`
host: api.example.com
trafficPolicy:
  tunnel: {protocol: CONNECT, targetHost: proxy.example.com, targetPort: 3128}
`)},

	// Invalid.
	{"missing host", dr(`
trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}  #!-1 GAL2002
`)},
	{"invalid host", dr(`
host: "bad host"  #! GAL2003
`)},
	{"empty traffic policy", dr(`
host: reviews
trafficPolicy: {}  #! GAL2032
`)},
	{"invalid subset name", dr(`
host: reviews
subsets:
- name: v_1  #! GAL2012
`)},
	{"duplicate subset", dr(`
host: reviews
subsets:
- name: v1
- name: v1  #! GAL2012
`)},
	{"subset without name", dr(`
host: reviews
subsets:
- labels: {version: v1}  #! GAL2012
`)},
	{"invalid subset label value", dr(`
host: reviews
subsets:
- name: v1
  labels:
    version: "v1!"  #! GAL2012
`)},
	{"empty connection pool", dr(`
host: reviews
trafficPolicy:
  connectionPool: {}  #! GAL2032
`)},
	{"negative pending requests", dr(`
host: reviews
trafficPolicy:
  connectionPool:
    http:
      http1MaxPendingRequests: -1  #! GAL2032
`)},
	{"upgrade with client protocol", dr(`
host: reviews
trafficPolicy:
  connectionPool:
    http:
      h2UpgradePolicy: UPGRADE
      useClientProtocol: true  #! GAL2032
`)},
	{"http2 keepalive without timeout", dr(`
host: reviews
trafficPolicy:
  connectionPool:
    http:
      http2KeepAlive: {interval: 10s}  #! GAL2002
`)},
	{"zero connect timeout", dr(`
host: reviews
trafficPolicy:
  connectionPool:
    tcp:
      connectTimeout: 0s  #! GAL2007
`)},
	{"max ejection percent over 100", dr(`
host: reviews
trafficPolicy:
  outlierDetection:
    maxEjectionPercent: 120  #! GAL2008
`)},
	{"local origin failures without split", dr(`
host: reviews
trafficPolicy:
  outlierDetection:
    consecutiveLocalOriginFailures: 5  #! GAL2032
`)},
	{"deprecated consecutive errors", dr(`
host: reviews
trafficPolicy:
  outlierDetection:
    consecutiveErrors: 5  #! GAL2037
`)},
	{"outlier interval finer than a millisecond", dr(`
host: reviews
trafficPolicy:
  outlierDetection:
    interval: 1.5ms  #! GAL2007
`)},
	{"maglev table size not prime", dr(`
host: reviews
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpHeaderName: x-user
      maglev:
        tableSize: 100  #! GAL2032
`)},
	{"cookie without name", dr(`
host: reviews
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie: {ttl: 10s}  #! GAL2002
`)},
	{"distribute and failover", dr(`
host: reviews
trafficPolicy:
  outlierDetection: {consecutive5xxErrors: 5}
  loadBalancer:
    localityLbSetting:  #! GAL2032
      distribute: [{from: a/b/c, to: {a/b/c: 100}}]
      failover: [{from: a, to: b}]
`)},
	{"locality weights not summing to 100", dr(`
host: reviews
trafficPolicy:
  loadBalancer:
    localityLbSetting:
      distribute:
      - from: us-west/*
        to:  #! GAL2009
          us-west/*: 60
          us-east/*: 30
`)},
	{"failover to the same region", dr(`
host: reviews
trafficPolicy:
  outlierDetection: {consecutive5xxErrors: 5}
  loadBalancer:
    localityLbSetting:
      failover:
      - {from: us-east, to: us-east}  #! GAL2032
`)},
	{"failover without outlier detection", dr(`
host: reviews
trafficPolicy:
  loadBalancer:
    localityLbSetting:  #! GAL2038
      failover: [{from: us-east, to: us-west}]
`)},
	{"mutual tls without certificates", dr(`
host: api.example.com
trafficPolicy:
  tls: {mode: MUTUAL}  #! GAL2015 GAL2015
`)},
	{"credential name with certificate files", dr(`
host: api.example.com
trafficPolicy:
  tls:
    mode: SIMPLE
    credentialName: api-ca  #! GAL2015
    caCertificates: /etc/ca.pem
`)},
	{"skip verify with ca certificates", dr(`
host: api.example.com
trafficPolicy:
  tls:
    mode: SIMPLE
    caCertificates: /etc/ca.pem
    insecureSkipVerify: true  #! GAL2015
`)},
	{"istio mutual with certificate files", dr(`
host: reviews
trafficPolicy:
  tls:
    mode: ISTIO_MUTUAL  #! GAL2037
    clientCertificate: /etc/cert.pem
`)},
	{"port level setting without port", dr(`
host: reviews
trafficPolicy:
  portLevelSettings:
  - tls: {mode: DISABLE}  #! GAL2002
`)},
	{"empty port level setting", dr(`
host: reviews
trafficPolicy:
  portLevelSettings:
  - port: {number: 80}  #! GAL2032
`)},
	{"invalid tunnel", dr(`
host: reviews
trafficPolicy:
  tunnel:
    protocol: GET  #! GAL2032
    targetHost: proxy.example.com
    targetPort: 0  #! GAL2004
`)},
	{"tunnel with proxy protocol", dr(`
host: reviews
trafficPolicy:
  tunnel: {targetHost: proxy.example.com, targetPort: 3128}  #! GAL2032
  proxyProtocol: {version: V2}
`)},
	{"selector rule exported elsewhere", dr(`
host: reviews
workloadSelector: {matchLabels: {app: productpage}}
exportTo: [other]  #! GAL2033
`)},
	{"empty workload selector", dr(`
host: reviews
workloadSelector: {}  #! GAL2014
`)},
	{"warmup without duration", dr(`
host: reviews
trafficPolicy:
  loadBalancer:
    simple: ROUND_ROBIN
    warmup: {minimumPercent: 10}  #! GAL2002
`)},
}
