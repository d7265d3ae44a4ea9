package validate_test

import "github.com/meshd/meshd/modules/galley/internal/galleytest"

var gatewayCases = []tc{
	// Valid.
	{"http and https with credential", gw(`
selector: {istio: ingressgateway}
servers:
- port: {number: 80, name: http, protocol: HTTP}
  hosts: [bookstore.example.com]
  tls: {httpsRedirect: true}
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: [bookstore.example.com]
  tls: {mode: SIMPLE, credentialName: bookstore-cert, minProtocolVersion: TLSV1_2}
`)},
	{"https with certificate files", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*.example.com"]
  tls: {mode: SIMPLE, serverCertificate: /etc/cert.pem, privateKey: /etc/key.pem}
`)},
	{"mutual tls with credential", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: [api.example.com]
  tls: {mode: MUTUAL, credentialName: api-cert}
`)},
	{"passthrough", gw(`
servers:
- port: {number: 443, name: tls, protocol: TLS}
  hosts: ["*"]
  tls: {mode: PASSTHROUGH}
`)},
	{"namespaced hosts", gw(`
servers:
- port: {number: 80, name: http, protocol: http}
  hosts: [bookstore/books.example.com, "*/*.example.com", "./*"]
`)},
	{"istio mutual east-west", gw(`
servers:
- port: {number: 15443, name: tls, protocol: TLS}
  hosts: ["*.local"]
  tls: {mode: ISTIO_MUTUAL}
`)},
	{"bind to an address", gw(`
servers:
- port: {number: 8080, name: http, protocol: HTTP}
  bind: 127.0.0.1
  hosts: ["*"]
`)},

	// Invalid.
	{"no servers", gw(`
selector: {istio: ingressgateway}  #!-1 GAL2002
`)},
	{"server without hosts", gw(`
servers:
- port: {number: 80, name: http, protocol: HTTP}  #! GAL2002
`)},
	{"short host", gw(`
servers:
- port: {number: 80, name: http, protocol: HTTP}
  hosts:
  - books  #! GAL2003
`)},
	{"invalid host namespace", gw(`
servers:
- port: {number: 80, name: http, protocol: HTTP}
  hosts:
  - Bad_NS/books.example.com  #! GAL2003
`)},
	{"wildcard in the middle", gw(`
servers:
- port: {number: 80, name: http, protocol: HTTP}
  hosts:
  - books.*.com  #! GAL2003
`)},
	{"server without port", gw(`
servers:
- hosts: ["*"]  #! GAL2002
`)},
	{"unknown protocol", gw(`
servers:
- port:
    number: 80
    name: http
    protocol: HTTP3  #! GAL2005
  hosts: ["*"]
`)},
	{"port without name", gw(`
servers:
- port: {number: 80, protocol: HTTP}  #! GAL2005
  hosts: ["*"]
`)},
	{"port zero", gw(`
servers:
- port: {number: 0, name: http, protocol: HTTP}  #! GAL2004
  hosts: ["*"]
`)},
	{"target port on gateway", gw(`
servers:
- port:
    number: 80
    name: http
    protocol: HTTP
    targetPort: 8080  #! GAL2028
  hosts: ["*"]
`)},
	{"https without tls", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}  #! GAL2015
  hosts: ["*"]
`)},
	{"tcp with tls", gw(`
servers:
- port: {number: 3306, name: mysql, protocol: TCP}
  hosts: ["*"]
  tls: {mode: SIMPLE, credentialName: x}  #! GAL2015
`)},
	{"simple tls without certificate", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*"]
  tls: {mode: SIMPLE}  #! GAL2015
`)},
	{"mutual tls without client ca", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*"]
  tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}  #! GAL2015
`)},
	{"istio mutual with credential", gw(`
servers:
- port: {number: 443, name: tls, protocol: TLS}
  hosts: ["*"]
  tls:
    mode: ISTIO_MUTUAL
    credentialName: x  #! GAL2015
`)},
	{"two certificate sources", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*"]
  tls: {mode: SIMPLE, credentialName: x, serverCertificate: /c.pem, privateKey: /k.pem}  #! GAL2015
`)},
	{"duplicate port names", gw(`
servers:
- port: {number: 80, name: web, protocol: HTTP}
  hosts: ["*"]
- port: {number: 8080, name: web, protocol: HTTP}  #! GAL2036
  hosts: ["*"]
`)},
	{"https redirect on an https server", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*"]
  tls:
    mode: SIMPLE
    credentialName: x
    httpsRedirect: true  #! GAL2038
`)},
	{"invalid bind", gw(`
servers:
- port: {number: 80, name: http, protocol: HTTP}
  bind: localhost  #! GAL2022
  hosts: ["*"]
`)},
	{"unix bind with port", gw(`
servers:
- port: {number: 80, name: http, protocol: HTTP}  #! GAL2028
  bind: unix:///var/run/gw.sock
  hosts: ["*"]
`)},
	{"unknown cipher", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*"]
  tls:
    mode: SIMPLE
    credentialName: x
    cipherSuites:
    - ECDHE-RSA-AES128-GCM-SHA256
    - SUPER-CIPHER  #! GAL2015
`)},
	{"old tls without ciphers", gw(`
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: ["*"]
  tls:
    mode: SIMPLE
    credentialName: x
    minProtocolVersion: TLSV1_0  #! GAL2038
`)},
	{"invalid selector label", gw(`
selector:
  "app!": gateway  #! GAL2013
servers:
- port: {number: 80, name: http, protocol: HTTP}
  hosts: ["*"]
`)},
	{"gateway name with a dot", galleytest.DocMeta("networking.istio.io/v1", "Gateway", "{name: gw.v1, namespace: ns}  #! GAL2001", `
servers:
- port: {number: 80, name: http, protocol: HTTP}
  hosts: ["*"]
`)},
}
