package validate

import (
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
)

func (c *checker) serviceEntry(se *networking.ServiceEntry) {
	ws := se.GetWorkloadSelector()
	c.selector("spec.workloadSelector.labels", ws.GetLabels(), ws != nil)
	if ws != nil && len(se.GetEndpoints()) > 0 {
		c.errf(api.CodeResolution, "spec.workloadSelector", "set workloadSelector or endpoints, not both")
	}
	res := se.GetResolution()
	if len(se.GetHosts()) == 0 {
		c.errf(api.CodeRequired, "spec.hosts", "ServiceEntry needs at least one host")
	}
	for i, h := range se.GetHosts() {
		p := at("spec", "hosts", i)
		if h == "*" {
			c.errf(api.CodeHost, p, "ServiceEntry host cannot be \"*\"; name the hosts, or use a wildcard such as \"*.example.com\"")
			continue
		}
		if err := checkWildcardHost(h); err != nil {
			c.errIf(api.CodeHost, p, err)
			continue
		}
		if res != networking.ServiceEntry_DYNAMIC_DNS && strings.Contains(h, "*") && !strings.HasPrefix(h, "*.") {
			c.warnf(api.CodeHost, p, "host %q has a partial wildcard; only \"*.\" prefixes work for resolution %s", h, res)
		}
	}
	cidr := false
	for i, a := range se.GetAddresses() {
		cidr = cidr || strings.Contains(a, "/")
		c.errIf(api.CodeAddress, at("spec", "addresses", i), checkIPOrCIDR(a))
	}
	if cidr && res != networking.ServiceEntry_NONE && res != networking.ServiceEntry_STATIC {
		c.errf(api.CodeResolution, "spec.addresses", "CIDR addresses need resolution NONE or STATIC, not %s", res)
	}

	portNames := make(map[string]bool, len(se.GetPorts()))
	portNumbers := make(map[uint32]bool, len(se.GetPorts()))
	for i, pt := range se.GetPorts() {
		p := at("spec", "ports", i)
		if pt == nil {
			c.errf(api.CodePort, p, "port must not be null")
			continue
		}
		if portNames[pt.GetName()] {
			c.errf(api.CodeDuplicate, p+".name", "port name %q is already defined", pt.GetName())
		}
		portNames[pt.GetName()] = true
		if portNumbers[pt.GetNumber()] {
			c.errf(api.CodeDuplicate, p+".number", "port %d is already defined", pt.GetNumber())
		}
		portNumbers[pt.GetNumber()] = true
		c.portNameProtocol(p, pt.GetName(), pt.GetProtocol(), true)
		c.port(p+".number", pt.GetNumber())
		if pt.GetTargetPort() != 0 {
			c.port(p+".targetPort", pt.GetTargetPort())
		}
	}

	switch res {
	case networking.ServiceEntry_NONE:
		if len(se.GetEndpoints()) > 0 {
			c.errf(api.CodeResolution, "spec.endpoints", "resolution NONE uses the destination address of each connection, so endpoints must not be set; use STATIC or DNS")
		}
		if ws != nil {
			c.warnf(api.CodeResolution, "spec.workloadSelector", "workloadSelector has no effect with resolution NONE; use STATIC")
		}
	case networking.ServiceEntry_STATIC:
		if len(se.GetEndpoints()) == 0 && ws == nil {
			c.warnf(api.CodeResolution, "spec.resolution", "resolution STATIC without endpoints or workloadSelector gives the service no endpoints")
		}
		for i, ep := range se.GetEndpoints() {
			p := at("spec", "endpoints", i)
			if ep == nil {
				c.errf(api.CodeWorkload, p, "endpoint must not be null")
				continue
			}
			c.endpoint(p, ep, portNames, false)
		}
	case networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN:
		if len(se.GetEndpoints()) == 0 {
			for i, h := range se.GetHosts() {
				if checkFQDN(h) != nil {
					c.errf(api.CodeResolution, at("spec", "hosts", i), "resolution %s without endpoints resolves the hosts themselves, so %q must be a DNS name without wildcards", res, h)
					break
				}
			}
		}
		if res == networking.ServiceEntry_DNS_ROUND_ROBIN && len(se.GetEndpoints()) > 1 {
			c.errf(api.CodeResolution, "spec.endpoints", "resolution DNS_ROUND_ROBIN takes at most one endpoint; use DNS for several")
		}
		for i, ep := range se.GetEndpoints() {
			p := at("spec", "endpoints", i)
			if ep == nil {
				c.errf(api.CodeWorkload, p, "endpoint must not be null")
				continue
			}
			c.endpoint(p, ep, portNames, true)
		}
		if len(se.GetAddresses()) > 0 && len(se.GetHosts()) > 1 {
			for _, pt := range se.GetPorts() {
				if pr := protocolOf(pt.GetProtocol()); pr == "" || pr == "TCP" || pr == "HTTPS" || pr == "TLS" || pr == "MONGO" || pr == "REDIS" || pr == "MYSQL" {
					c.warnf(api.CodeResolution, "spec.hosts", "with addresses and a TCP port, only one host can be told apart; list one host per ServiceEntry")
					break
				}
			}
		}
	case networking.ServiceEntry_DYNAMIC_DNS:
		for i, h := range se.GetHosts() {
			if !strings.HasPrefix(h, "*") {
				c.errf(api.CodeResolution, at("spec", "hosts", i), "resolution DYNAMIC_DNS needs wildcard hosts such as \"*.example.com\", not %q", h)
			}
		}
		if len(se.GetAddresses()) > 0 {
			c.errf(api.CodeResolution, "spec.addresses", "resolution DYNAMIC_DNS cannot have addresses; destinations come from the host names")
		}
		if len(se.GetEndpoints()) > 0 {
			c.errf(api.CodeResolution, "spec.endpoints", "resolution DYNAMIC_DNS cannot have endpoints; destinations come from the host names")
		}
		for i, pt := range se.GetPorts() {
			switch protocolOf(pt.GetProtocol()) {
			case "HTTP", "TLS", "GRPC", "HTTP2":
			default:
				c.errf(api.CodeResolution, at("spec", "ports", i)+".protocol", "resolution DYNAMIC_DNS supports protocols HTTP, HTTP2, GRPC and TLS only")
			}
		}
	}

	// Several hosts on a plain TCP port cannot be told apart.
	if res != networking.ServiceEntry_NONE && len(se.GetHosts()) > 1 {
		for i, pt := range se.GetPorts() {
			if pt != nil && !isHTTPProtocol(pt.GetProtocol()) && !isTLSProtocol(pt.GetProtocol()) {
				c.errf(api.CodeResolution, at("spec", "ports", i), "several hosts share non-HTTP, non-TLS port %d, so traffic cannot be told apart; split the ServiceEntry", pt.GetNumber())
				break
			}
		}
	}
	c.exportTo("spec.exportTo", se.GetExportTo(), true, false)
}

// portNameProtocol checks a service or sidecar port's name and protocol. An
// empty protocol means "detect".
func (c *checker) portNameProtocol(p, name, protocol string, nameRequired bool) {
	if name == "" {
		if nameRequired {
			c.errf(api.CodePortNameProto, p+".name", "port needs a name, e.g. http")
		}
	} else if !isDNSLabel(name) {
		c.errf(api.CodePortNameProto, p+".name", "port name %q must be a DNS label: letters, digits and '-'", name)
	}
	if protocol != "" && protocolOf(protocol) == "" {
		c.errf(api.CodePortNameProto, p+".protocol", "protocol %q is not supported; use %s", protocol, protocolList)
	}
}

// endpoint checks a ServiceEntry endpoint. servicePorts are the names of the
// entry's ports; fqdnOK allows DNS names as addresses.
func (c *checker) endpoint(p string, ep *networking.WorkloadEntry, servicePorts map[string]bool, fqdnOK bool) {
	c.workloadAddress(p, ep, fqdnOK)
	for _, name := range sortedKeys(ep.GetPorts()) {
		pp := key(p, "ports", name)
		if !servicePorts[name] {
			c.errf(api.CodeWorkload, pp, "endpoint port %q is not one of the ServiceEntry's port names", name)
		}
		c.port(pp, ep.GetPorts()[name])
	}
	c.labels(p+".labels", ep.GetLabels(), api.CodeWorkload)
	if strings.HasPrefix(ep.GetAddress(), unixPrefix) && len(servicePorts) != 1 {
		c.errf(api.CodeWorkload, p+".address", "a Unix socket endpoint needs a ServiceEntry with exactly one port")
	}
}

// workloadAddress checks a workload's address: an IP, a unix:// socket, or
// (when fqdnOK) a DNS name.
func (c *checker) workloadAddress(p string, we *networking.WorkloadEntry, fqdnOK bool) {
	addr := we.GetAddress()
	switch {
	case addr == "":
		if we.GetNetwork() == "" {
			c.errf(api.CodeRequired, p+".address", "workload needs an address")
		}
	case strings.HasPrefix(addr, unixPrefix):
		c.errIf(api.CodeWorkload, p+".address", checkUnixPath(strings.TrimPrefix(addr, unixPrefix)))
		if len(we.GetPorts()) > 0 {
			c.errf(api.CodeWorkload, p+".ports", "a Unix socket address cannot have ports")
		}
	case isIP(addr):
	case !fqdnOK:
		c.errf(api.CodeAddress, p+".address", "address %q must be an IP address with resolution STATIC", addr)
	default:
		if checkFQDN(addr) != nil {
			c.errf(api.CodeAddress, p+".address", "address %q is neither an IP address nor a DNS name", addr)
		}
	}
}

func (c *checker) workloadEntry(we *networking.WorkloadEntry) {
	if we.GetAddress() == "" && we.GetNetwork() != "" {
		c.warnf(api.CodeSurprising, "spec.address", "address is unset; the workload is reachable only through network %q's gateway", we.GetNetwork())
	}
	c.workloadAddress("spec", we, true)
	for _, name := range sortedKeys(we.GetPorts()) {
		p := key("spec", "ports", name)
		if !isDNSLabel(name) {
			c.errf(api.CodePortNameProto, p, "port name %q must be a DNS label", name)
		}
		c.port(p, we.GetPorts()[name])
	}
	c.labels("spec.labels", we.GetLabels(), api.CodeWorkload)
	// Istio does not check the name, so this is a warning; but an identity
	// with such a name cannot be matched by service-account rules.
	if sa := we.GetServiceAccount(); sa != "" && !isK8sSubdomain(sa) {
		c.warnf(api.CodeWorkload, "spec.serviceAccount", "serviceAccount %q is not a valid service account name (lowercase letters, digits, '-' and '.')", sa)
	}
}

func (c *checker) workloadGroup(wg *networking.WorkloadGroup) {
	if wg.GetTemplate() == nil {
		c.errf(api.CodeRequired, "spec.template", "WorkloadGroup needs a template")
	} else {
		t := wg.GetTemplate()
		for _, name := range sortedKeys(t.GetPorts()) {
			p := key("spec.template", "ports", name)
			if !isDNSLabel(name) {
				c.errf(api.CodePortNameProto, p, "port name %q must be a DNS label", name)
			}
			c.port(p, t.GetPorts()[name])
		}
		c.labels("spec.template.labels", t.GetLabels(), api.CodeWorkload)
		if t.GetAddress() != "" {
			c.warnf(api.CodeSurprising, "spec.template.address", "template address is ignored; each workload registers its own address")
		}
	}
	if md := wg.GetMetadata(); md != nil {
		c.labels("spec.metadata.labels", md.GetLabels(), api.CodeWorkload)
	}
	c.probe("spec.probe", wg.GetProbe())
}

func (c *checker) probe(p string, pr *networking.ReadinessProbe) {
	if pr == nil {
		return
	}
	for _, f := range []struct {
		name string
		v    int32
	}{
		{"periodSeconds", pr.GetPeriodSeconds()},
		{"initialDelaySeconds", pr.GetInitialDelaySeconds()},
		{"timeoutSeconds", pr.GetTimeoutSeconds()},
		{"successThreshold", pr.GetSuccessThreshold()},
		{"failureThreshold", pr.GetFailureThreshold()},
	} {
		if f.v < 0 {
			c.errf(api.CodeWorkload, p+"."+f.name, "%s %d is negative", f.name, f.v)
		}
	}
	switch m := pr.GetHealthCheckMethod().(type) {
	case *networking.ReadinessProbe_HttpGet:
		hp := p + ".httpGet"
		c.port(hp+".port", m.HttpGet.GetPort())
		if s := m.HttpGet.GetScheme(); s != "" && s != "HTTP" && s != "HTTPS" {
			c.errf(api.CodeWorkload, hp+".scheme", "httpGet scheme %q must be HTTP or HTTPS", s)
		}
		for i, h := range m.HttpGet.GetHttpHeaders() {
			if !isProbeHeader(h.GetName()) {
				c.errf(api.CodeHeader, at(hp, "httpHeaders", i)+".name", "probe header name %q must use only letters, digits and '-'", h.GetName())
			}
		}
	case *networking.ReadinessProbe_TcpSocket:
		c.port(p+".tcpSocket.port", m.TcpSocket.GetPort())
	case *networking.ReadinessProbe_Exec:
		if len(m.Exec.GetCommand()) == 0 {
			c.errf(api.CodeRequired, p+".exec.command", "exec probe needs a command")
		}
	case *networking.ReadinessProbe_Grpc:
		c.port(p+".grpc.port", m.Grpc.GetPort())
	default:
		c.errf(api.CodeRequired, p, "probe needs httpGet, tcpSocket, exec or grpc")
	}
}

func isProbeHeader(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}
