package security

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/meshd/meshd/core"
)

func TestAggregate(t *testing.T) {
	render := func(addrs ...string) string {
		var out []string
		for _, r := range Aggregate(addrs) {
			out = append(out, r.GetAddressPrefix()+"/"+strconv.FormatUint(uint64(r.GetPrefixLen().GetValue()), 10))
		}
		return strings.Join(out, " ")
	}
	var block []string
	for i := range 256 {
		block = append(block, "10.1.2."+strconv.Itoa(i))
	}
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"10.0.0.1"}, "10.0.0.1/32"},
		{[]string{"10.0.0.2", "10.0.0.3", "10.0.0.2"}, "10.0.0.2/31"},
		{[]string{"10.0.0.1", "10.0.0.2"}, "10.0.0.1/32 10.0.0.2/32"},
		{[]string{"10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"}, "10.0.0.4/30 10.0.0.8/32"},
		{append(block, "10.1.3.0"), "10.1.2.0/24 10.1.3.0/32"},
		{[]string{"fd00::1", "10.0.0.1", "bogus"}, "10.0.0.1/32 fd00::1/128"},
		{nil, ""},
	} {
		if got := render(tc.in...); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.in, got, tc.want)
		}
		// Exactness: every range holds only listed addresses.
		for _, r := range Aggregate(tc.in) {
			p := netip.MustParsePrefix(r.GetAddressPrefix() + "/" + strconv.FormatUint(uint64(r.GetPrefixLen().GetValue()), 10))
			n := 1 << (p.Addr().BitLen() - p.Bits())
			listed := map[string]bool{}
			for _, a := range tc.in {
				listed[a] = true
			}
			a := p.Addr()
			for range n {
				if !listed[a.String()] {
					t.Errorf("%s covers %s, which is not listed", p, a)
				}
				a = a.Next()
			}
		}
	}
}

// TestCustomProviders checks how CUSTOM policies fail closed on Envoy: a
// provider not in mesh.extensionProviders, or a second provider on one
// workload, turns the policy's rules into DENY rules; an HTTP provider
// cannot check TCP connections, so on TCP chains its rules deny too.
func TestCustomProviders(t *testing.T) {
	mesh := core.DefaultMeshConfig()
	mesh.ExtensionProviders = &[]core.ExtensionProvider{
		{Name: "a", EnvoyExtAuthzHTTP: &core.ExtAuthzHTTPService{Service: "a.foo.svc.cluster.local", Port: 80}},
		{Name: "b", EnvoyExtAuthzGRPC: &core.ExtAuthzGRPCService{Service: "b.foo.svc.cluster.local", Port: 90}},
	}
	policy := func(name, provider, path string) string {
		return "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: foo}\n" +
			"spec:\n  action: CUSTOM\n  provider: {name: " + provider + "}\n  rules: [{to: [{operation: {paths: [\"" + path + "\"]}}]}]\n"
	}
	c := configOf(t, mesh, policy("p1", "a", "/a*")+policy("p2", "b", "/b*")+policy("p3", "missing", "/m*"))
	var names []string
	var deny rbachttpv3.RBAC
	for _, f := range c.EnvoyHTTPFilters(httpbin, 80) {
		names = append(names, f.GetName())
		if f.GetName() == FilterDeny {
			if err := f.GetTypedConfig().UnmarshalTo(&deny); err != nil {
				t.Fatal(err)
			}
		}
	}
	if strings.Join(names, ",") != FilterCustom+","+FilterExtAuthz+","+FilterDeny {
		t.Fatalf("filters %v", names)
	}
	if _, ok := deny.GetRules().GetPolicies()["foo/p2[0]"]; !ok {
		t.Error("the second provider's policy does not deny")
	}
	if _, ok := deny.GetRules().GetPolicies()["foo/p3[0]"]; !ok {
		t.Error("the unknown provider's policy does not deny")
	}
	if _, ok := deny.GetRules().GetPolicies()["foo/p1[0]"]; ok {
		t.Error("the first provider's policy denies instead of calling it")
	}
	var tcp []string
	for _, f := range c.EnvoyNetworkFilters(httpbin, 80, "x") {
		tcp = append(tcp, f.GetName())
	}
	if strings.Join(tcp, ",") != NetworkFilterDeny {
		t.Errorf("TCP filters %v: an HTTP authorizer cannot check connections, so all CUSTOM rules deny", tcp)
	}
	plan := c.planCustom(c.AuthorizationPolicies(httpbin).Custom)
	if len(plan.problems) != 2 {
		t.Errorf("problems %v", plan.problems)
	}
}
