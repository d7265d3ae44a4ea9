package validate

import (
	"net"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
)

func (c *checker) sidecar(sc *networking.Sidecar) {
	ws := sc.GetWorkloadSelector()
	c.selector("spec.workloadSelector.labels", ws.GetLabels(), ws != nil)
	if len(sc.GetEgress()) == 0 && len(sc.GetIngress()) == 0 && sc.GetOutboundTrafficPolicy() == nil && sc.GetInboundConnectionPool() == nil {
		c.errf(api.CodeRequired, "spec", "Sidecar is empty; set egress, ingress, outboundTrafficPolicy or inboundConnectionPool")
		return
	}

	ports := map[uint32]bool{}
	for i, in := range sc.GetIngress() {
		p := at("spec", "ingress", i)
		if in == nil {
			c.errf(api.CodeSidecar, p, "ingress listener must not be null")
			continue
		}
		pt := in.GetPort()
		if pt == nil {
			c.errf(api.CodeRequired, p+".port", "ingress listener needs a port")
			continue
		}
		//nolint:staticcheck // targetPort is deprecated.
		if pt.GetTargetPort() > 0 {
			c.errf(api.CodeSidecar, p+".port.targetPort", "targetPort has no effect on Sidecars; remove it")
		}
		c.portNameProtocol(p+".port", pt.GetName(), pt.GetProtocol(), false)
		c.port(p+".port.number", pt.GetNumber())
		if b := in.GetBind(); b != "" && !isIP(b) {
			c.errf(api.CodeAddress, p+".bind", "bind %q must be an IP address", b)
		}
		if ports[pt.GetNumber()] {
			c.errf(api.CodeDuplicate, p+".port.number", "port %d is used by another ingress listener", pt.GetNumber())
		}
		ports[pt.GetNumber()] = true
		if de := in.GetDefaultEndpoint(); de != "" {
			c.defaultEndpoint(p+".defaultEndpoint", de)
		}
		if t := in.GetTls(); t != nil {
			c.sidecarIngressTLS(p+".tls", t, pt.GetProtocol())
		}
		c.connectionPool(p+".connectionPool", in.GetConnectionPool())
		if in.GetConnectionPool().GetHttp() != nil && !isHTTPProtocol(pt.GetProtocol()) {
			c.warnf(api.CodeSurprising, p+".connectionPool.http", "port %d is not HTTP (%s), so only the tcp connection pool settings apply", pt.GetNumber(), pt.GetProtocol())
		}
	}
	c.connectionPool("spec.inboundConnectionPool", sc.GetInboundConnectionPool())

	ports = map[uint32]bool{}
	sockets := map[string]bool{}
	catchAll := false
	for i, eg := range sc.GetEgress() {
		p := at("spec", "egress", i)
		if eg == nil {
			c.errf(api.CodeSidecar, p, "egress listener must not be null")
			continue
		}
		if pt := eg.GetPort(); pt == nil {
			switch {
			case catchAll:
				c.errf(api.CodeSidecar, p, "only one egress listener may omit its port")
			case i != len(sc.GetEgress())-1:
				c.errf(api.CodeSidecar, p, "the egress listener without a port catches everything else and must come last")
			}
			catchAll = true
		} else {
			//nolint:staticcheck // targetPort is deprecated.
			if pt.GetTargetPort() > 0 {
				c.errf(api.CodeSidecar, p+".port.targetPort", "targetPort has no effect on Sidecars; remove it")
			}
			c.portNameProtocol(p+".port", pt.GetName(), pt.GetProtocol(), false)
			bind := eg.GetBind()
			if pt.GetNumber() == 0 {
				if sock, ok := strings.CutPrefix(bind, unixPrefix); !ok {
					c.errf(api.CodeSidecar, p+".bind", "a listener with port 0 needs a unix:// bind address")
				} else {
					c.errIf(api.CodeSidecar, p+".bind", checkUnixPath(sock))
				}
				if cm := eg.GetCaptureMode(); cm != networking.CaptureMode_DEFAULT && cm != networking.CaptureMode_NONE {
					c.errf(api.CodeSidecar, p+".captureMode", "Unix socket listeners need captureMode DEFAULT or NONE")
				}
				if sockets[bind] {
					c.errf(api.CodeDuplicate, p+".bind", "Unix socket %q is used by another egress listener", bind)
				}
				sockets[bind] = true
			} else {
				c.port(p+".port.number", pt.GetNumber())
				if bind != "" && !isIP(bind) {
					c.errf(api.CodeAddress, p+".bind", "bind %q must be an IP address", bind)
				}
				if ports[pt.GetNumber()] {
					c.errf(api.CodeDuplicate, p+".port.number", "port %d is used by another egress listener", pt.GetNumber())
				}
				ports[pt.GetNumber()] = true
			}
		}
		c.egressHosts(p, eg.GetHosts())
	}

	if tp := sc.GetOutboundTrafficPolicy(); tp != nil && tp.GetEgressProxy() != nil {
		p := "spec.outboundTrafficPolicy"
		if tp.GetMode() != networking.OutboundTrafficPolicy_ALLOW_ANY {
			c.errf(api.CodeSidecar, p+".egressProxy", "egressProxy needs mode ALLOW_ANY")
		} else {
			ep := tp.GetEgressProxy()
			c.errIf(api.CodeHost, p+".egressProxy.host", checkFQDN(ep.GetHost()))
			if ep.GetPort() == nil {
				c.errf(api.CodeRequired, p+".egressProxy.port", "egressProxy needs a port")
			} else {
				c.destination(p+".egressProxy", ep, api.CodeSidecar)
			}
		}
	}
}

// defaultEndpoint checks where an ingress listener forwards to: a loopback
// or any address with a port, or a Unix socket.
func (c *checker) defaultEndpoint(p, de string) {
	if sock, ok := strings.CutPrefix(de, unixPrefix); ok {
		c.errIf(api.CodeSidecar, p, checkUnixPath(sock))
		return
	}
	host, port, err := net.SplitHostPort(de)
	if err != nil {
		c.errf(api.CodeSidecar, p, "defaultEndpoint %q must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix:///path", de)
		return
	}
	switch host {
	case "", "127.0.0.1", "0.0.0.0", "::1", "::":
	default:
		c.errf(api.CodeSidecar, p, "defaultEndpoint host %q must be 127.0.0.1, 0.0.0.0, ::1 or ::", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		c.errf(api.CodeSidecar, p, "defaultEndpoint port %q is not a number", port)
		return
	}
	if n < 1 || n > 65535 {
		c.errf(api.CodePort, p, "defaultEndpoint port %d is not in 1..65535", n)
	}
}

func (c *checker) sidecarIngressTLS(p string, t *networking.ServerTLSSettings, protocol string) {
	for _, f := range []struct {
		set  bool
		name string
	}{
		{len(t.GetSubjectAltNames()) > 0, "subjectAltNames"},
		{t.GetHttpsRedirect(), "httpsRedirect"},
		{t.GetCredentialName() != "", "credentialName"},
		{len(t.GetCredentialNames()) > 0, "credentialNames"},
		{len(t.GetTlsCertificates()) > 0, "tlsCertificates"},
	} {
		if f.set {
			c.errf(api.CodeTLS, p+"."+f.name, "%s is not supported in Sidecar ingress TLS", f.name)
		}
	}
	if m := t.GetMode(); m == networking.ServerTLSSettings_ISTIO_MUTUAL || m == networking.ServerTLSSettings_AUTO_PASSTHROUGH {
		c.errf(api.CodeTLS, p+".mode", "mode %s is not allowed in Sidecar ingress TLS", m)
	}
	if !isTLSProtocol(protocol) {
		c.errf(api.CodeTLS, p, "TLS settings need port protocol HTTPS or TLS, not %q", protocol)
	}
	c.serverTLS(p, t)
}

// egressHosts checks the namespace/host entries of an egress listener.
func (c *checker) egressHosts(p string, hosts []string) {
	if len(hosts) == 0 {
		c.errf(api.CodeRequired, p+".hosts", "egress listener needs at least one host, e.g. \"./*\" or \"istio-system/*\"")
		return
	}
	byNS := map[string]map[string]bool{}
	for i, h := range hosts {
		hp := at(p, "hosts", i)
		c.namespacedHost(hp, h, false)
		ns, svc, ok := strings.Cut(h, "/")
		if !ok || strings.HasPrefix(ns, "~") {
			continue
		}
		if ns == "." {
			ns = c.o.Namespace
		}
		if byNS[ns] == nil {
			byNS[ns] = map[string]bool{}
		}
		if svc != "*" && (byNS[ns][svc] || byNS[ns]["*"]) || svc == "*" && len(byNS[ns]) > 0 {
			c.warnf(api.CodeDuplicate, hp, "egress host %q is already covered by an earlier entry", h)
		}
		byNS[ns][svc] = true
	}
	if byNS["*"]["*"] && len(byNS) > 1 {
		c.warnf(api.CodeDuplicate, p+".hosts", "\"*/*\" already selects every host; the other entries have no effect")
	}
}
