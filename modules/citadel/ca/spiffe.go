package ca

import (
	"fmt"
	"strings"
)

// SPIFFEID returns the workload identity spiffe://<td>/ns/<ns>/sa/<sa>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// ParseSPIFFEID splits a workload identity of the form
// spiffe://<td>/ns/<ns>/sa/<sa>. Anything else is an error.
func ParseSPIFFEID(id string) (trustDomain, namespace, serviceAccount string, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", "", fmt.Errorf("identity %q: not a spiffe:// URI", id)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", "", fmt.Errorf("identity %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", id)
	}
	if !validTrustDomain(parts[0]) {
		return "", "", "", fmt.Errorf("identity %q: invalid trust domain %q", id, parts[0])
	}
	for _, seg := range []string{parts[2], parts[4]} {
		if !validSegment(seg) {
			return "", "", "", fmt.Errorf("identity %q: invalid path segment %q", id, seg)
		}
	}
	return parts[0], parts[2], parts[4], nil
}

// NormalizeIdentity accepts a full workload identity, or the short forms
// ns/<ns>/sa/<sa> and <ns>/<sa>, and returns the full identity in
// trustDomain. A full identity of another trust domain is an error.
func NormalizeIdentity(s, trustDomain string) (string, error) {
	if !strings.HasPrefix(s, "spiffe://") {
		parts := strings.Split(s, "/")
		switch {
		case len(parts) == 4 && parts[0] == "ns" && parts[2] == "sa":
			s = SPIFFEID(trustDomain, parts[1], parts[3])
		case len(parts) == 2:
			s = SPIFFEID(trustDomain, parts[0], parts[1])
		default:
			return "", fmt.Errorf("identity %q: want spiffe://%s/ns/<ns>/sa/<sa>, ns/<ns>/sa/<sa> or <ns>/<sa>", s, trustDomain)
		}
	}
	td, _, _, err := ParseSPIFFEID(s)
	if err != nil {
		return "", err
	}
	if td != trustDomain {
		return "", fmt.Errorf("identity %q is not in trust domain %q", s, trustDomain)
	}
	return s, nil
}

// validTrustDomain follows the SPIFFE spec: lowercase letters, digits, dots,
// dashes and underscores.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 255 {
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

// ValidTrustDomain reports whether td is a valid SPIFFE trust domain name.
func ValidTrustDomain(td string) bool { return validTrustDomain(td) }
