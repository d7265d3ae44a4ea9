// Package spiffe builds and parses the workload identities meshd issues and
// checks: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, the
// form Istio uses. It is the one parser the CA, the xDS server and the
// security policies share, so all of them accept exactly the same IDs.
package spiffe

import (
	"fmt"
	"strings"
)

// ID returns spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func ID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// Parse splits a workload identity of the form
// spiffe://<td>/ns/<ns>/sa/<sa>, checking the trust domain and path
// segments against the SPIFFE spec. Anything else is an error.
func Parse(id string) (trustDomain, namespace, serviceAccount string, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", "", fmt.Errorf("identity %q: not a spiffe:// URI", id)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", "", fmt.Errorf("identity %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", id)
	}
	if !ValidTrustDomain(parts[0]) {
		return "", "", "", fmt.Errorf("identity %q: invalid trust domain %q", id, parts[0])
	}
	for _, seg := range []string{parts[2], parts[4]} {
		if !validSegment(seg) {
			return "", "", "", fmt.Errorf("identity %q: invalid path segment %q", id, seg)
		}
	}
	return parts[0], parts[2], parts[4], nil
}

// ValidTrustDomain reports whether td is a valid SPIFFE trust domain name:
// lowercase letters, digits, dots, dashes and underscores, in dot-separated
// labels none of which is empty. The SPIFFE character set alone would allow
// ".td" or "a..b", but Go's x509 (and so every grpc-go peer) refuses a
// certificate whose URI host has an empty label, so such an ID could never
// be used.
func ValidTrustDomain(td string) bool {
	if td == "" || len(td) > 255 || td[0] == '.' || td[len(td)-1] == '.' || strings.Contains(td, "..") {
		return false
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validSegment follows the SPIFFE spec for path segments.
func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
