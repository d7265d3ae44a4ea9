package validate

import (
	"math"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
)

func (c *checker) destinationRule(dr *networking.DestinationRule) {
	if dr.GetHost() == "" {
		c.errf(api.CodeRequired, "spec.host", "DestinationRule needs a host")
	} else {
		c.errIf(api.CodeHost, "spec.host", checkWildcardHost(dr.GetHost()))
	}
	c.trafficPolicy("spec.trafficPolicy", dr.GetTrafficPolicy())
	seen := make(map[string]bool, len(dr.GetSubsets()))
	for i, s := range dr.GetSubsets() {
		p := at("spec", "subsets", i)
		if s == nil {
			c.errf(api.CodeSubset, p, "subset must not be null")
			continue
		}
		switch {
		case s.GetName() == "":
			c.errf(api.CodeSubset, p+".name", "subset needs a name")
		case !isDNSLabel(s.GetName()):
			c.errf(api.CodeSubset, p+".name", "subset name %q must be a DNS label: letters, digits and '-', at most 63 characters", s.GetName())
		case seen[s.GetName()]:
			c.errf(api.CodeSubset, p+".name", "subset %q is defined twice", s.GetName())
		}
		seen[s.GetName()] = true
		c.labels(p+".labels", s.GetLabels(), api.CodeSubset)
		c.trafficPolicy(p+".trafficPolicy", s.GetTrafficPolicy())
	}
	ws := dr.GetWorkloadSelector()
	c.exportTo("spec.exportTo", dr.GetExportTo(), false, ws != nil)
	c.selector("spec.workloadSelector.matchLabels", ws.GetMatchLabels(), ws != nil)
}

func (c *checker) trafficPolicy(p string, tp *networking.TrafficPolicy) {
	if tp == nil {
		return
	}
	if tp.GetLoadBalancer() == nil && tp.GetConnectionPool() == nil && tp.GetOutlierDetection() == nil &&
		tp.GetTls() == nil && len(tp.GetPortLevelSettings()) == 0 && tp.GetTunnel() == nil &&
		tp.GetProxyProtocol() == nil && tp.GetRetryBudget() == nil {
		c.errf(api.CodeTrafficPolicy, p, "trafficPolicy is empty; set at least one policy or remove it")
		return
	}
	if tp.GetTunnel() != nil && tp.GetProxyProtocol() != nil {
		c.errf(api.CodeTrafficPolicy, p+".tunnel", "tunnel and proxyProtocol cannot be used together")
	}
	c.outlierDetection(p+".outlierDetection", tp.GetOutlierDetection())
	c.connectionPool(p+".connectionPool", tp.GetConnectionPool())
	c.loadBalancer(p+".loadBalancer", tp.GetLoadBalancer(), tp.GetOutlierDetection() != nil)
	c.clientTLS(p+".tls", tp.GetTls())
	for i, pl := range tp.GetPortLevelSettings() {
		pp := at(p, "portLevelSettings", i)
		if pl == nil {
			c.errf(api.CodeTrafficPolicy, pp, "port-level setting must not be null")
			continue
		}
		if pl.GetPort() == nil {
			c.errf(api.CodeRequired, pp+".port", "port-level setting needs port: {number: N}")
		} else {
			c.port(pp+".port.number", pl.GetPort().GetNumber())
		}
		if pl.GetOutlierDetection() == nil && pl.GetConnectionPool() == nil && pl.GetLoadBalancer() == nil && pl.GetTls() == nil {
			c.errf(api.CodeTrafficPolicy, pp, "port-level setting is empty; set loadBalancer, connectionPool, outlierDetection or tls")
			continue
		}
		c.outlierDetection(pp+".outlierDetection", pl.GetOutlierDetection())
		c.connectionPool(pp+".connectionPool", pl.GetConnectionPool())
		c.loadBalancer(pp+".loadBalancer", pl.GetLoadBalancer(), pl.GetOutlierDetection() != nil)
		c.clientTLS(pp+".tls", pl.GetTls())
	}
	if t := tp.GetTunnel(); t != nil {
		tpp := p + ".tunnel"
		if pr := t.GetProtocol(); pr != "" && pr != "CONNECT" && pr != "POST" {
			c.errf(api.CodeTrafficPolicy, tpp+".protocol", "tunnel protocol %q must be CONNECT or POST", pr)
		}
		if h := t.GetTargetHost(); checkFQDN(h) != nil && !isIP(h) {
			c.errf(api.CodeHost, tpp+".targetHost", "tunnel targetHost %q must be a DNS name or an IP address", h)
		}
		c.port(tpp+".targetPort", t.GetTargetPort())
	}
	if rb := tp.GetRetryBudget(); rb != nil && rb.GetPercent() != nil {
		if v := rb.GetPercent().GetValue(); v < 0 || v > 100 {
			c.errf(api.CodePercent, p+".retryBudget.percent", "retry budget percent %g is not in 0..100", v)
		}
	}
}

func (c *checker) outlierDetection(p string, od *networking.OutlierDetection) {
	if od == nil {
		return
	}
	c.duration(p+".baseEjectionTime", od.GetBaseEjectionTime())
	c.duration(p+".interval", od.GetInterval())
	//nolint:staticcheck // consecutiveErrors is deprecated but still accepted.
	if od.GetConsecutiveErrors() != 0 {
		c.warnf(api.CodeDeprecated, p+".consecutiveErrors", "consecutiveErrors is deprecated; use consecutive5xxErrors or consecutiveGatewayErrors")
	}
	if !od.GetSplitExternalLocalOriginErrors() && od.GetConsecutiveLocalOriginFailures().GetValue() > 0 {
		c.errf(api.CodeTrafficPolicy, p+".consecutiveLocalOriginFailures", "consecutiveLocalOriginFailures only works with splitExternalLocalOriginErrors: true")
	}
	c.percent(p+".maxEjectionPercent", od.GetMaxEjectionPercent())
	c.percent(p+".minHealthPercent", od.GetMinHealthPercent())
}

func (c *checker) connectionPool(p string, cp *networking.ConnectionPoolSettings) {
	if cp == nil {
		return
	}
	if cp.GetHttp() == nil && cp.GetTcp() == nil {
		c.errf(api.CodeTrafficPolicy, p, "connectionPool is empty; set tcp or http settings")
		return
	}
	if h := cp.GetHttp(); h != nil {
		hp := p + ".http"
		for _, f := range []struct {
			name string
			v    int32
		}{
			{"http1MaxPendingRequests", h.GetHttp1MaxPendingRequests()},
			{"http2MaxRequests", h.GetHttp2MaxRequests()},
			{"maxRequestsPerConnection", h.GetMaxRequestsPerConnection()},
			{"maxRetries", h.GetMaxRetries()},
			{"maxConcurrentStreams", h.GetMaxConcurrentStreams()},
		} {
			if f.v < 0 {
				c.errf(api.CodeTrafficPolicy, hp+"."+f.name, "%s %d is negative", f.name, f.v)
			}
		}
		c.duration(hp+".idleTimeout", h.GetIdleTimeout())
		if h.GetH2UpgradePolicy() == networking.ConnectionPoolSettings_HTTPSettings_UPGRADE && h.GetUseClientProtocol() {
			c.errf(api.CodeTrafficPolicy, hp+".useClientProtocol", "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE")
		}
		if ka := h.GetHttp2KeepAlive(); ka != nil {
			if ka.GetInterval() == nil {
				c.errf(api.CodeRequired, hp+".http2KeepAlive.interval", "http2KeepAlive needs an interval")
			}
			if ka.GetTimeout() == nil {
				c.errf(api.CodeRequired, hp+".http2KeepAlive.timeout", "http2KeepAlive needs a timeout")
			}
			c.duration(hp+".http2KeepAlive.interval", ka.GetInterval())
			c.duration(hp+".http2KeepAlive.timeout", ka.GetTimeout())
		}
	}
	if t := cp.GetTcp(); t != nil {
		tp := p + ".tcp"
		if t.GetMaxConnections() < 0 {
			c.errf(api.CodeTrafficPolicy, tp+".maxConnections", "maxConnections %d is negative", t.GetMaxConnections())
		}
		c.duration(tp+".connectTimeout", t.GetConnectTimeout())
		c.duration(tp+".maxConnectionDuration", t.GetMaxConnectionDuration())
		// An idle timeout of 0s disables it.
		if it := t.GetIdleTimeout(); it != nil && it.AsDuration() != 0 {
			c.duration(tp+".idleTimeout", it)
		}
		if ka := t.GetTcpKeepalive(); ka != nil {
			c.duration(tp+".tcpKeepalive.time", ka.GetTime())
			c.duration(tp+".tcpKeepalive.interval", ka.GetInterval())
		}
	}
}

func (c *checker) loadBalancer(p string, lb *networking.LoadBalancerSettings, hasOutlier bool) {
	if lb == nil {
		return
	}
	if ch := lb.GetConsistentHash(); ch != nil {
		chp := p + ".consistentHash"
		if hc := ch.GetHttpCookie(); hc != nil {
			if hc.GetName() == "" {
				c.errf(api.CodeRequired, chp+".httpCookie.name", "httpCookie needs a name")
			}
			seen := map[string]bool{}
			for i, a := range hc.GetAttributes() {
				ap := at(chp+".httpCookie", "attributes", i)
				switch {
				case a.GetName() == "":
					c.errf(api.CodeRequired, ap+".name", "cookie attribute needs a name")
				case seen[a.GetName()]:
					c.errf(api.CodeDuplicate, ap+".name", "cookie attribute %q is given twice", a.GetName())
				}
				seen[a.GetName()] = true
			}
		}
		//nolint:staticcheck // minimumRingSize is deprecated but still accepted.
		if ch.GetMinimumRingSize() != 0 {
			c.warnf(api.CodeDeprecated, chp+".minimumRingSize", "minimumRingSize is deprecated; use ringHash: {minimumRingSize: N}")
			if ch.GetHashAlgorithm() != nil {
				c.errf(api.CodeTrafficPolicy, chp+".minimumRingSize", "set minimumRingSize or ringHash/maglev, not both")
			}
		}
		if ml := ch.GetMaglev(); ml != nil {
			ts := ml.GetTableSize()
			switch {
			case ts == 0:
				c.errf(api.CodeTrafficPolicy, chp+".maglev.tableSize", "maglev needs a tableSize (a prime below 5000011, e.g. 65537)")
			case ts >= 5000011:
				c.errf(api.CodeTrafficPolicy, chp+".maglev.tableSize", "maglev tableSize %d must be below 5000011", ts)
			case !isPrime(ts):
				c.errf(api.CodeTrafficPolicy, chp+".maglev.tableSize", "maglev tableSize %d must be a prime number, e.g. 65537", ts)
			}
		}
	}
	if lb.GetLocalityLbSetting() != nil && lb.GetZoneAwareLbSetting() != nil {
		c.errf(api.CodeTrafficPolicy, p, "set localityLbSetting or zoneAwareLbSetting, not both")
	}
	if ll := lb.GetLocalityLbSetting(); ll != nil {
		c.locality(p+".localityLbSetting", ll, hasOutlier)
	}
	if za := lb.GetZoneAwareLbSetting(); za != nil {
		zp := p + ".zoneAwareLbSetting"
		if (len(za.GetFailover()) > 0 || len(za.GetFailoverPriority()) > 0) && !hasOutlier {
			c.warnf(api.CodeSurprising, zp, "failover only happens with outlierDetection configured; add outlierDetection")
		}
		for i, f := range za.GetFailover() {
			c.failover(at(zp, "failover", i), f.GetFrom(), f.GetTo())
		}
	}
	if w := lb.GetWarmup(); w != nil {
		wp := p + ".warmup"
		if w.GetDuration() == nil {
			c.errf(api.CodeRequired, wp+".duration", "warmup needs a duration")
		} else {
			c.duration(wp+".duration", w.GetDuration())
		}
		if w.GetMinimumPercent().GetValue() > 100 || w.GetMinimumPercent().GetValue() < 0 {
			c.errf(api.CodePercent, wp+".minimumPercent", "minimumPercent %g is not in 0..100", w.GetMinimumPercent().GetValue())
		}
		if w.GetAggression() != nil && w.GetAggression().GetValue() <= 0 {
			c.errf(api.CodeTrafficPolicy, wp+".aggression", "aggression must be greater than 0")
		}
	}
}

func (c *checker) locality(p string, ll *networking.LocalityLoadBalancerSetting, hasOutlier bool) {
	if len(ll.GetDistribute()) > 0 && len(ll.GetFailover()) > 0 {
		c.errf(api.CodeTrafficPolicy, p, "set distribute or failover, not both")
		return
	}
	if len(ll.GetFailover()) > 0 {
		for i, l := range ll.GetFailoverPriority() {
			switch l {
			case "topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone":
				c.errf(api.CodeTrafficPolicy, at(p, "failoverPriority", i), "failoverPriority cannot use %s together with failover", l)
			}
		}
	}
	for i, d := range ll.GetDistribute() {
		dp := at(p, "distribute", i)
		c.errIf(api.CodeTrafficPolicy, dp+".from", checkLocality(d.GetFrom()))
		var total uint64
		for _, loc := range sortedKeys(d.GetTo()) {
			w := d.GetTo()[loc]
			if w == 0 || w > 100 {
				c.errf(api.CodeWeight, key(dp, "to", loc), "locality weight %d is not in 1..100", w)
			}
			c.errIf(api.CodeTrafficPolicy, key(dp, "to", loc), checkLocality(loc))
			total += uint64(w)
		}
		if total != 100 {
			c.errf(api.CodeWeight, dp+".to", "locality weights sum to %d; they must sum to 100", total)
		}
	}
	if (len(ll.GetFailover()) > 0 || len(ll.GetFailoverPriority()) > 0) && !hasOutlier {
		c.warnf(api.CodeSurprising, p, "failover only happens with outlierDetection configured; add outlierDetection")
	}
	for i, f := range ll.GetFailover() {
		c.failover(at(p, "failover", i), f.GetFrom(), f.GetTo())
	}
}

func (c *checker) failover(p, from, to string) {
	switch {
	case from == to:
		c.errf(api.CodeTrafficPolicy, p, "failover from and to must be different regions, both are %q", from)
	case strings.Contains(from, "/") || strings.Contains(to, "/"):
		c.errf(api.CodeTrafficPolicy, p, "failover names regions only, without zone or subzone")
	case strings.Contains(from, "*") || strings.Contains(to, "*"):
		c.errf(api.CodeTrafficPolicy, p, "failover regions cannot contain '*'")
	}
}

// checkLocality checks region/zone/subzone with an optional trailing '*'.
func checkLocality(l string) error {
	if n := strings.Count(l, "*"); n > 1 || n == 1 && !strings.HasSuffix(l, "*") {
		return errf("locality %q may contain one '*', at the end only", l)
	}
	for _, part := range strings.SplitN(l, "/", 3) {
		if part == "" {
			return errf("locality %q has an empty region, zone or subzone", l)
		}
	}
	return nil
}

// isPrime reports whether x is prime; maglev table sizes must be.
func isPrime(x uint64) bool {
	if x < 2 {
		return false
	}
	if x < 4 {
		return true
	}
	if x%2 == 0 {
		return false
	}
	limit := uint64(math.Sqrt(float64(x)))
	for f := uint64(3); f <= limit; f += 2 {
		if x%f == 0 {
			return false
		}
	}
	return true
}

// clientTLS checks the TLS settings a sidecar uses towards a destination.
func (c *checker) clientTLS(p string, t *networking.ClientTLSSettings) {
	if t == nil {
		return
	}
	mode := t.GetMode()
	if t.GetInsecureSkipVerify().GetValue() {
		switch mode {
		case networking.ClientTLSSettings_SIMPLE:
			if t.GetCaCertificates() != "" || t.GetCredentialName() != "" || len(t.GetSubjectAltNames()) > 0 {
				c.errf(api.CodeTLS, p+".insecureSkipVerify", "insecureSkipVerify turns verification off, so caCertificates, credentialName and subjectAltNames cannot be set with it")
			}
		case networking.ClientTLSSettings_MUTUAL:
			if t.GetCaCertificates() != "" || len(t.GetSubjectAltNames()) > 0 {
				c.errf(api.CodeTLS, p+".insecureSkipVerify", "insecureSkipVerify turns verification off, so caCertificates and subjectAltNames cannot be set with it")
			}
		}
	}
	switch mode {
	case networking.ClientTLSSettings_SIMPLE, networking.ClientTLSSettings_MUTUAL:
		if t.GetCredentialName() != "" {
			if t.GetClientCertificate() != "" || t.GetCaCertificates() != "" || t.GetPrivateKey() != "" || t.GetCaCrl() != "" {
				c.errf(api.CodeTLS, p+".credentialName", "with credentialName, certificates come from the credential; remove clientCertificate, privateKey, caCertificates and caCrl")
			}
			return
		}
		if mode == networking.ClientTLSSettings_MUTUAL {
			if t.GetClientCertificate() == "" {
				c.errf(api.CodeTLS, p+".clientCertificate", "MUTUAL TLS needs clientCertificate (or credentialName)")
			}
			if t.GetPrivateKey() == "" {
				c.errf(api.CodeTLS, p+".privateKey", "MUTUAL TLS needs privateKey (or credentialName)")
			}
		}
	case networking.ClientTLSSettings_ISTIO_MUTUAL:
		if t.GetClientCertificate() != "" || t.GetPrivateKey() != "" || t.GetCaCertificates() != "" || t.GetCredentialName() != "" {
			c.warnf(api.CodeDeprecated, p+".mode", "ISTIO_MUTUAL uses mesh certificates; clientCertificate, privateKey, caCertificates and credentialName are ignored")
		}
	}
}
