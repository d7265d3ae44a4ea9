package validate

import (
	"path"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
)

// unixPrefix marks a Unix domain socket address in bind and endpoints.
const unixPrefix = "unix://"

func (c *checker) gateway(gw *networking.Gateway) {
	if len(gw.GetServers()) == 0 {
		c.errf(api.CodeRequired, "spec.servers", "Gateway needs at least one server")
	}
	portNames := make(map[string]int, len(gw.GetServers()))
	for i, s := range gw.GetServers() {
		p := at("spec", "servers", i)
		if s == nil {
			c.errf(api.CodeServer, p, "server must not be null")
			continue
		}
		c.server(p, s)
		if pt := s.GetPort(); pt != nil {
			if first, dup := portNames[pt.GetName()]; dup && pt.GetName() != "" {
				c.errf(api.CodeDuplicate, p+".port.name", "port name %q is already used by server %d; server port names must be unique", pt.GetName(), first)
			} else {
				portNames[pt.GetName()] = i
			}
			if s.GetTls().GetHttpsRedirect() && !isHTTPProtocol(pt.GetProtocol()) {
				c.warnf(api.CodeSurprising, p+".tls.httpsRedirect", "httpsRedirect only has an effect on HTTP servers")
			}
		}
	}
	c.labels("spec.selector", gw.GetSelector(), api.CodeSelector)
}

func (c *checker) server(p string, s *networking.Server) {
	if len(s.GetHosts()) == 0 {
		c.errf(api.CodeRequired, p+".hosts", "server needs at least one host, e.g. \"*\" or \"bookstore.example.com\"")
	}
	for i, h := range s.GetHosts() {
		c.namespacedHost(at(p, "hosts", i), h, true)
	}
	portOK := c.serverPort(p+".port", s.GetPort(), s.GetBind())
	if b := s.GetBind(); b != "" {
		if sock, ok := strings.CutPrefix(b, unixPrefix); ok {
			c.errIf(api.CodeServer, p+".bind", checkUnixPath(sock))
			if s.GetPort().GetNumber() != 0 {
				c.errf(api.CodeServer, p+".port.number", "a server bound to a Unix socket must have port number 0")
			}
		} else if !isIP(b) {
			c.errf(api.CodeAddress, p+".bind", "bind %q must be an IP address or unix:///path", b)
		}
	}
	c.serverTLS(p+".tls", s.GetTls())
	if !portOK {
		return
	}
	proto := s.GetPort().GetProtocol()
	tls := s.GetTls()
	switch {
	case isTLSProtocol(proto) && tls == nil:
		c.errf(api.CodeTLS, p+".tls", "a %s server needs tls settings (mode and credentialName, or PASSTHROUGH)", strings.ToUpper(proto))
	case !isTLSProtocol(proto) && tls != nil:
		if isHTTPProtocol(proto) {
			// Plain HTTP servers may only carry httpsRedirect.
			if tls.GetMode() != networking.ServerTLSSettings_PASSTHROUGH || tls.GetCaCertificates() != "" || tls.GetPrivateKey() != "" || tls.GetServerCertificate() != "" {
				c.errf(api.CodeTLS, p+".tls", "a plain HTTP server cannot terminate TLS; use protocol HTTPS, or keep only httpsRedirect: true")
			}
		} else {
			c.errf(api.CodeTLS, p+".tls", "a %s server cannot have tls settings; use protocol HTTPS or TLS", strings.ToUpper(proto))
		}
	}
}

// serverPort checks a gateway server port and reports whether it is usable
// for further checks.
func (c *checker) serverPort(p string, pt *networking.Port, bind string) bool {
	if pt == nil {
		c.errf(api.CodeRequired, p, "server needs a port: {number, name, protocol}")
		return false
	}
	ok := true
	if protocolOf(pt.GetProtocol()) == "" {
		c.errf(api.CodePortNameProto, p+".protocol", "protocol %q is not supported; use %s", pt.GetProtocol(), protocolList)
		ok = false
	}
	if pt.GetNumber() > 0 || !strings.HasPrefix(bind, unixPrefix) {
		c.port(p+".number", pt.GetNumber())
	}
	//nolint:staticcheck // targetPort is deprecated.
	if pt.GetTargetPort() > 0 {
		c.errf(api.CodeServer, p+".targetPort", "targetPort has no effect on Gateways; remove it")
	}
	if pt.GetName() == "" {
		c.errf(api.CodePortNameProto, p+".name", "server port needs a name, e.g. http or https")
	}
	return ok
}

// namespacedHost checks a "namespace/host" entry of a Gateway server or a
// Sidecar egress listener. Gateways also accept a bare host.
func (c *checker) namespacedHost(p, h string, isGateway bool) {
	ns, name, ok := strings.Cut(h, "/")
	if !ok {
		if !isGateway {
			c.errf(api.CodeHost, p, "host %q must be namespace/host, e.g. \"./*\" or \"istio-system/*\"", h)
			return
		}
		c.hostPart(p, h, true)
		return
	}
	if ns == "" || name == "" {
		c.errf(api.CodeHost, p, "host %q must have both a namespace and a host around the \"/\"", h)
		return
	}
	if isGateway {
		if ns != "*" && ns != "." && !isDNSLabel(ns) {
			c.errf(api.CodeHost, p, "host %q has an invalid namespace %q; use \"*\", \".\" or a namespace name", h, ns)
		}
	} else {
		n := strings.TrimPrefix(ns, "~")
		if n != "*" && n != "." && n != "" && !isDNSLabel(n) {
			c.errf(api.CodeHost, p, "host %q has an invalid namespace %q; use \"*\", \".\", \"~\" or a namespace name", h, ns)
		}
	}
	c.hostPart(p, name, isGateway)
}

// hostPart checks the host of a namespace/host entry: "*", a wildcard or an
// FQDN; never a short name. Gateways may also use an IP address.
func (c *checker) hostPart(p, h string, isGateway bool) {
	if h != "*" && !strings.Contains(h, ".") {
		c.errf(api.CodeHost, p, "host %q is a short name; write the fully qualified name, e.g. %s.<namespace>.svc.cluster.local", h, h)
		return
	}
	if err := checkWildcardHost(h); err != nil {
		if isGateway && isIP(h) {
			return
		}
		c.errIf(api.CodeHost, p, err)
	}
}

// cipherSuites are the cipher names BoringSSL (Envoy's TLS library) accepts.
var cipherSuites = map[string]bool{
	"ECDHE-ECDSA-AES128-GCM-SHA256": true, "ECDHE-RSA-AES128-GCM-SHA256": true,
	"ECDHE-ECDSA-AES256-GCM-SHA384": true, "ECDHE-RSA-AES256-GCM-SHA384": true,
	"ECDHE-ECDSA-CHACHA20-POLY1305": true, "ECDHE-RSA-CHACHA20-POLY1305": true,
	"ECDHE-ECDSA-AES128-SHA": true, "ECDHE-RSA-AES128-SHA": true,
	"ECDHE-ECDSA-AES256-SHA": true, "ECDHE-RSA-AES256-SHA": true,
	"AES128-GCM-SHA256": true, "AES256-GCM-SHA384": true, "AES128-SHA": true, "AES256-SHA": true,
	"DES-CBC3-SHA": true,
}

// serverTLS checks the TLS settings of a gateway server or sidecar ingress.
func (c *checker) serverTLS(p string, t *networking.ServerTLSSettings) {
	if t == nil {
		return
	}
	mode := t.GetMode()
	if v := t.GetMinProtocolVersion(); (v == networking.ServerTLSSettings_TLSV1_0 || v == networking.ServerTLSSettings_TLSV1_1) && len(t.GetCipherSuites()) == 0 {
		c.warnf(api.CodeSurprising, p+".minProtocolVersion", "TLS versions below 1.2 need explicit cipherSuites; the defaults do not include compatible ciphers")
	}
	seen := map[string]bool{}
	for i, cs := range t.GetCipherSuites() {
		cp := at(p, "cipherSuites", i)
		switch {
		case seen[cs]:
			c.warnf(api.CodeDuplicate, cp, "cipher suite %q is listed twice", cs)
		case cs != "" && cs != "ALL" && isAlnum(cs[0]) && !cipherSuites[cs]:
			c.warnf(api.CodeTLS, cp, "cipher suite %q is not supported and will be ignored", cs)
		}
		seen[cs] = true
	}
	hasKeyPair := t.GetServerCertificate() != "" && t.GetPrivateKey() != ""
	switch mode {
	case networking.ServerTLSSettings_ISTIO_MUTUAL:
		for _, f := range []struct {
			set  bool
			name string
		}{
			{t.GetServerCertificate() != "", "serverCertificate"},
			{t.GetPrivateKey() != "", "privateKey"},
			{t.GetCaCertificates() != "", "caCertificates"},
			{len(t.GetTlsCertificates()) > 0, "tlsCertificates"},
			{t.GetCredentialName() != "", "credentialName"},
			{len(t.GetCredentialNames()) > 0, "credentialNames"},
		} {
			if f.set {
				c.errf(api.CodeTLS, p+"."+f.name, "ISTIO_MUTUAL uses mesh certificates and cannot have %s", f.name)
			}
		}
		return
	case networking.ServerTLSSettings_PASSTHROUGH, networking.ServerTLSSettings_AUTO_PASSTHROUGH:
		if t.GetCaCrl() != "" || t.GetServerCertificate() != "" || t.GetPrivateKey() != "" || t.GetCaCertificates() != "" ||
			len(t.GetTlsCertificates()) > 0 || t.GetCredentialName() != "" || len(t.GetCredentialNames()) > 0 {
			c.warnf(api.CodeDeprecated, p+".mode", "%s does not terminate TLS, so the certificates set here are ignored", mode)
		}
	}
	sources := 0
	for _, set := range []bool{hasKeyPair, t.GetCredentialName() != "", len(t.GetCredentialNames()) > 0, len(t.GetTlsCertificates()) > 0} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		c.errf(api.CodeTLS, p, "set only one certificate source: credentialName, credentialNames, serverCertificate/privateKey or tlsCertificates")
	}
	terminating := mode == networking.ServerTLSSettings_SIMPLE || mode == networking.ServerTLSSettings_MUTUAL || mode == networking.ServerTLSSettings_OPTIONAL_MUTUAL
	if t.GetCaCrl() != "" {
		if t.GetCredentialName() != "" {
			c.errf(api.CodeTLS, p+".caCrl", "caCrl cannot be used with credentialName; put the CRL in the credential")
		}
		if mode == networking.ServerTLSSettings_SIMPLE {
			c.errf(api.CodeTLS, p+".caCrl", "caCrl needs client certificates (MUTUAL); SIMPLE TLS does not verify clients")
		}
	}
	if !terminating || t.GetCredentialName() != "" || len(t.GetCredentialNames()) > 0 {
		return
	}
	label := "SIMPLE TLS"
	if mode != networking.ServerTLSSettings_SIMPLE {
		label = "MUTUAL TLS"
		if t.GetCaCertificates() == "" {
			c.errf(api.CodeTLS, p+".caCertificates", "%s needs caCertificates to verify clients, or a credentialName", label)
		}
	}
	if len(t.GetTlsCertificates()) > 2 {
		c.warnf(api.CodeTLS, p+".tlsCertificates", "%s uses at most 2 server certificates (one RSA, one ECDSA)", label)
	}
	if len(t.GetTlsCertificates()) > 0 {
		for i, tc := range t.GetTlsCertificates() {
			tp := at(p, "tlsCertificates", i)
			if tc.GetServerCertificate() == "" {
				c.errf(api.CodeTLS, tp+".serverCertificate", "%s needs serverCertificate", label)
			}
			if tc.GetPrivateKey() == "" {
				c.errf(api.CodeTLS, tp+".privateKey", "%s needs privateKey", label)
			}
		}
		return
	}
	if t.GetServerCertificate() == "" && t.GetPrivateKey() == "" {
		c.errf(api.CodeTLS, p, "%s needs a certificate: set credentialName (recommended) or serverCertificate and privateKey", label)
		return
	}
	if t.GetServerCertificate() == "" {
		c.errf(api.CodeTLS, p+".serverCertificate", "%s needs serverCertificate with privateKey", label)
	}
	if t.GetPrivateKey() == "" {
		c.errf(api.CodeTLS, p+".privateKey", "%s needs privateKey with serverCertificate", label)
	}
}

// checkUnixPath accepts "@abstract" names and absolute file paths.
func checkUnixPath(p string) error {
	if p == "" {
		return errf("unix socket path must not be empty")
	}
	if strings.HasPrefix(p, "@") {
		return nil
	}
	if !path.IsAbs(p) || strings.HasSuffix(p, "/") {
		return errf("unix socket %q must be an absolute path to a file", p)
	}
	return nil
}
