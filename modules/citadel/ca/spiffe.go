package ca

import (
	"fmt"
	"strings"

	"github.com/meshd/meshd/core/spiffe"
)

// SPIFFEID returns the workload identity spiffe://<td>/ns/<ns>/sa/<sa>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return spiffe.ID(trustDomain, namespace, serviceAccount)
}

// ParseSPIFFEID splits a workload identity of the form
// spiffe://<td>/ns/<ns>/sa/<sa>. Anything else is an error.
func ParseSPIFFEID(id string) (trustDomain, namespace, serviceAccount string, err error) {
	return spiffe.Parse(id)
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

// ValidTrustDomain reports whether td is a valid SPIFFE trust domain name.
func ValidTrustDomain(td string) bool { return spiffe.ValidTrustDomain(td) }
