package validate_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/internal/galleytest"
	"github.com/meshd/meshd/modules/galley/validate"
)

// tc is one table case: a YAML document whose "#!" markers give the
// expected finding codes and lines (none: the object must be clean).
type tc struct {
	name string
	src  string
}

// Spec-body helpers, one per kind. Bodies start on line 5.
func vs(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "VirtualService", "vs", body)
}
func dr(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "DestinationRule", "dr", body)
}
func gw(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "Gateway", "gw", body)
}
func se(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "ServiceEntry", "se", body)
}
func we(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "WorkloadEntry", "we", body)
}
func wg(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "WorkloadGroup", "wg", body)
}
func sc(body string) string {
	return galleytest.Doc("networking.istio.io/v1", "Sidecar", "sc", body)
}
func pa(body string) string {
	return galleytest.Doc("security.istio.io/v1", "PeerAuthentication", "pa", body)
}
func ap(body string) string {
	return galleytest.Doc("security.istio.io/v1", "AuthorizationPolicy", "ap", body)
}
func ra(body string) string {
	return galleytest.Doc("security.istio.io/v1", "RequestAuthentication", "ra", body)
}

// check decodes src, validates the objects that decoded cleanly, and
// compares the findings with the markers.
func check(t *testing.T, src string) {
	t.Helper()
	res := decode.Decode("case.yaml", []byte(src))
	fs := append([]api.Finding(nil), res.Findings...)
	fs = append(fs, validate.Objects(res.Objects)...)
	if len(res.Objects)+len(res.Rejected) == 0 {
		t.Fatalf("case decoded to no object:%s%s", galleytest.Describe(fs), galleytest.Numbered(src))
	}
	want, got := galleytest.Expected(src), galleytest.Got(fs)
	if !slices.Equal(want, got) {
		t.Errorf("findings differ\nwant %v\ngot  %v%s\nsource:%s", want, got, galleytest.Describe(fs), galleytest.Numbered(src))
	}
	for _, f := range fs {
		if f.Message == "" || f.Severity == 0 || f.File != "case.yaml" {
			t.Errorf("incomplete finding %+v", f)
		}
		if info, ok := api.LookupCode(f.Code); !ok {
			t.Errorf("finding uses undocumented code %s", f.Code)
		} else if info.Stage == "analyze" {
			t.Errorf("validation reported analysis code %s", f.Code)
		}
	}
}

// runCases runs a table and returns its size, so TestCaseCount can check
// the total.
func runCases(t *testing.T, cases []tc) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.name] {
			t.Errorf("duplicate case name %q", c.name)
		}
		seen[c.name] = true
		t.Run(c.name, func(t *testing.T) { check(t, c.src) })
	}
}

// allTables lists every kind's table, for the count check.
func allTables() map[string][]tc {
	return map[string][]tc{
		"VirtualService":        virtualServiceCases,
		"DestinationRule":       destinationRuleCases,
		"Gateway":               gatewayCases,
		"ServiceEntry":          serviceEntryCases,
		"WorkloadEntry":         workloadEntryCases,
		"WorkloadGroup":         workloadGroupCases,
		"Sidecar":               sidecarCases,
		"PeerAuthentication":    peerAuthenticationCases,
		"AuthorizationPolicy":   authorizationPolicyCases,
		"RequestAuthentication": requestAuthenticationCases,
		"metadata":              metadataCases,
	}
}

// TestCaseCount keeps the tables honest: every kind has valid and invalid
// cases, and there are at least 150 in all.
func TestCaseCount(t *testing.T) {
	total := 0
	for kind, cases := range allTables() {
		valid, invalid := 0, 0
		for _, c := range cases {
			if len(galleytest.Expected(c.src)) == 0 {
				valid++
			} else {
				invalid++
			}
		}
		if valid == 0 || invalid == 0 {
			t.Errorf("%s: %d valid and %d invalid cases; want both", kind, valid, invalid)
		}
		total += len(cases)
		t.Logf("%-22s %3d cases (%d valid, %d invalid)", kind, len(cases), valid, invalid)
	}
	if total < 150 {
		t.Errorf("%d cases in all; want at least 150", total)
	}
	t.Logf("total %d cases", total)
}

func TestVirtualService(t *testing.T)        { runCases(t, virtualServiceCases) }
func TestDestinationRule(t *testing.T)       { runCases(t, destinationRuleCases) }
func TestGateway(t *testing.T)               { runCases(t, gatewayCases) }
func TestServiceEntry(t *testing.T)          { runCases(t, serviceEntryCases) }
func TestWorkloadEntry(t *testing.T)         { runCases(t, workloadEntryCases) }
func TestWorkloadGroup(t *testing.T)         { runCases(t, workloadGroupCases) }
func TestSidecar(t *testing.T)               { runCases(t, sidecarCases) }
func TestPeerAuthentication(t *testing.T)    { runCases(t, peerAuthenticationCases) }
func TestAuthorizationPolicy(t *testing.T)   { runCases(t, authorizationPolicyCases) }
func TestRequestAuthentication(t *testing.T) { runCases(t, requestAuthenticationCases) }
func TestMetadata(t *testing.T)              { runCases(t, metadataCases) }

// TestEveryValidationCodeIsTested makes sure no validation code lacks an
// invalid case.
func TestEveryValidationCodeIsTested(t *testing.T) {
	tested := map[api.Code]bool{}
	for _, cases := range allTables() {
		for _, c := range cases {
			for _, e := range galleytest.Expected(c.src) {
				tested[api.Code(e[:strings.IndexByte(e, '@')])] = true
			}
		}
	}
	for _, ci := range api.Codes() {
		if ci.Stage == "validate" && !tested[ci.Code] {
			t.Errorf("validation code %s (%s) has no test case", ci.Code, ci.Title)
		}
	}
}
