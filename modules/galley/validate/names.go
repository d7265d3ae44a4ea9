package validate

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// The character-class checks below are hand-written loops rather than
// regexps: they run for every host, label and name in every object, and a
// loop is an order of magnitude cheaper than regexp matching.

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isLowerAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

// isDNSLabel reports whether s is an RFC 1123 label as Istio checks it:
// letters (either case), digits and inner hyphens, at most 63 characters.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if !isAlnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

// isK8sLabel reports whether s is a lowercase RFC 1123 label, the rule for
// Kubernetes namespaces and Gateway names.
func isK8sLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if !isLowerAlnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

// isK8sSubdomain reports whether s is a lowercase RFC 1123 subdomain, the
// rule for Kubernetes object names.
func isK8sSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if !isK8sLabel(part) {
			return false
		}
	}
	return true
}

// isWildcardLabel accepts "*", "*foo", "*-foo" and plain labels: Istio's
// rule for the first label of a host.
func isWildcardLabel(s string) bool {
	if s == "*" {
		return true
	}
	if rest, ok := strings.CutPrefix(s, "*"); ok {
		rest = strings.TrimPrefix(rest, "-")
		return len(s) <= 63 && isDNSLabel(rest)
	}
	return isDNSLabel(s)
}

// checkDomainLabels checks the labels of a domain after its first one.
func checkDomainLabels(domain, rest string) error {
	parts := strings.Split(rest, ".")
	for i, p := range parts {
		if i == len(parts)-1 && p == "" && i > 0 {
			break // trailing dot, as in "istio.io."
		}
		if !isDNSLabel(p) {
			if strings.Contains(p, "*") {
				return fmt.Errorf("host %q has a wildcard outside its first label; only a leading \"*.\" is allowed", domain)
			}
			return fmt.Errorf("host %q is not a valid DNS name: label %q is invalid", domain, p)
		}
	}
	return nil
}

// checkTLD rejects all-numeric last labels, which make a name look like an
// IP address.
func checkTLD(domain string) error {
	d := strings.TrimSuffix(domain, ".")
	tld := d[strings.LastIndexByte(d, '.')+1:]
	if tld == "" {
		return nil
	}
	for i := 0; i < len(tld); i++ {
		if tld[i] < '0' || tld[i] > '9' {
			return nil
		}
	}
	return fmt.Errorf("host %q is not a valid DNS name: the last label %q is all digits", domain, tld)
}

// checkWildcardHost validates a host that may start with a wildcard label:
// "*", "*.example.com", "reviews", "reviews.bookstore.svc.cluster.local".
func checkWildcardHost(h string) error {
	if h == "" {
		return errors.New("host must not be empty")
	}
	if len(h) > 255 {
		return fmt.Errorf("host %q is longer than 255 characters", h[:40]+"...")
	}
	first, rest, hasRest := strings.Cut(h, ".")
	if !isWildcardLabel(first) {
		if strings.Contains(first, "*") {
			return fmt.Errorf("host %q has a partial wildcard; only \"*\" or a \"*\" prefix of the first label is allowed, as in \"*.example.com\"", h)
		}
		return fmt.Errorf("host %q is not a valid DNS name: label %q is invalid", h, first)
	}
	if !hasRest {
		return nil
	}
	if err := checkDomainLabels(h, rest); err != nil {
		return err
	}
	return checkTLD(h)
}

// checkFQDN validates a host without wildcards.
func checkFQDN(h string) error {
	if h == "" {
		return errors.New("host must not be empty")
	}
	if len(h) > 255 {
		return fmt.Errorf("host %q is longer than 255 characters", h[:40]+"...")
	}
	if err := checkDomainLabels(h, h); err != nil {
		return err
	}
	return checkTLD(h)
}

// isIP reports whether s is an IPv4 or IPv6 address.
func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// checkIPOrCIDR accepts an address or a CIDR block.
func checkIPOrCIDR(s string) error {
	if strings.Contains(s, "/") {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("%q is not a valid CIDR block (want a.b.c.d/n or an IPv6 prefix)", s)
		}
		return nil
	}
	if !isIP(s) {
		return fmt.Errorf("%q is not a valid IP address or CIDR block", s)
	}
	return nil
}

// checkLabelKey validates a Kubernetes label key: an optional DNS subdomain
// prefix and "/", then a name of at most 63 alphanumerics, '-', '_' or '.'
// that starts and ends alphanumeric.
func checkLabelKey(k string) error {
	name := k
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		prefix := k[:i]
		name = k[i+1:]
		if len(prefix) > 253 || !isDNSSubdomainAnyCase(prefix) {
			return fmt.Errorf("label key %q has an invalid prefix %q; it must be a DNS subdomain", k, prefix)
		}
	}
	if name == "" {
		return fmt.Errorf("label key %q has an empty name", k)
	}
	if len(name) > 63 {
		return fmt.Errorf("label key %q is longer than 63 characters", k)
	}
	if !isQualifiedName(name) {
		return fmt.Errorf("label key %q is invalid: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit", k)
	}
	return nil
}

// checkLabelValue validates a label value: empty, or at most 63 characters
// of the same set as a key name.
func checkLabelValue(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 63 {
		return fmt.Errorf("label value %q is longer than 63 characters", v)
	}
	if !isQualifiedName(v) {
		return fmt.Errorf("label value %q is invalid: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit", v)
	}
	return nil
}

func isQualifiedName(s string) bool {
	if s == "" || !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isDNSSubdomainAnyCase(s string) bool {
	if s == "" {
		return false
	}
	for _, p := range strings.Split(s, ".") {
		if !isDNSLabel(p) {
			return false
		}
	}
	return true
}

// protocols are the port protocols Istio recognizes, upper-cased.
var protocols = map[string]bool{
	"HTTP": true, "HTTPS": true, "HTTP2": true, "HTTP_PROXY": true, "GRPC": true, "GRPC-WEB": true,
	"TCP": true, "TLS": true, "UDP": true, "MONGO": true, "REDIS": true, "MYSQL": true,
}

// protocolOf normalizes a protocol name; "" when unknown.
func protocolOf(p string) string {
	u := strings.ToUpper(p)
	if protocols[u] {
		return u
	}
	return ""
}

func isHTTPProtocol(p string) bool {
	switch protocolOf(p) {
	case "HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB":
		return true
	}
	return false
}

func isTLSProtocol(p string) bool {
	switch protocolOf(p) {
	case "HTTPS", "TLS":
		return true
	}
	return false
}

const protocolList = "HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS, MYSQL or UDP"

// isToken reports whether s is an HTTP header field name (RFC 7230 token).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) {
			continue
		}
		switch c {
		case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
			continue
		}
		return false
	}
	return true
}

// pseudoHeaders are the HTTP/2 pseudo-headers a route may match on.
var pseudoHeaders = map[string]bool{
	":method": true, ":scheme": true, ":authority": true, ":path": true, ":status": true,
}

// checkHeaderValue rejects control characters and unescaped '%': Envoy
// treats %NAME% and %NAME(args)% as variables and "%%" as a literal
// percent sign, and rejects anything else.
func checkHeaderValue(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("header value %q contains a control character", v)
		}
	}
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			i++
			continue
		}
		end, ok := scanVariable(v, i+1)
		if !ok {
			return fmt.Errorf("header value %q has an unescaped %%; write %%%% for a literal percent sign or %%NAME%% for an Envoy variable", v)
		}
		i = end
	}
	return nil
}

// scanVariable scans the body of a %NAME% or %NAME(args)% variable starting
// after the opening '%' and returns the index of the closing '%'.
func scanVariable(v string, i int) (int, bool) {
	for ; i < len(v); i++ {
		switch v[i] {
		case '%':
			return i, true
		case '(':
			inString := false
			for i++; i < len(v); i++ {
				switch {
				case inString && v[i] == '\\':
					i++
				case v[i] == '"':
					inString = !inString
				case !inString && v[i] == ')':
					for i++; i < len(v) && v[i] == ' '; i++ {
					}
					return i, i < len(v) && v[i] == '%'
				}
			}
			return i, false
		}
	}
	return i, false
}

// errf is fmt.Errorf for messages without wrapped errors.
func errf(format string, args ...any) error {
	return fmt.Errorf(format, args...)
}
