package galley_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshd/meshd/modules/galley"
	"github.com/meshd/meshd/modules/galley/api"
)

const (
	dr = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
  trafficPolicy: {loadBalancer: {simple: RANDOM}, bogus: true}
`
	vs = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}], timeout: 0s}]
`
)

// TestRejectedObjectsStillResolve checks the pipeline's handling of objects
// that fail to decode: their own problem is reported once, and objects that
// refer to them do not get "not found" findings on top.
func TestRejectedObjectsStillResolve(t *testing.T) {
	res := galley.New(galley.Options{}).CheckBytes("set.yaml", []byte(dr+"---\n"+vs))
	var codes []string
	for _, f := range res.Findings {
		codes = append(codes, string(f.Code))
	}
	// GAL1006: the DestinationRule's unknown field. GAL2007: the zero
	// timeout. GAL3004: reviews is a cluster-local host nobody declares.
	// No GAL3002: subset v1 is defined by the rejected DestinationRule.
	require.Equal(t, []string{"GAL1006", "GAL2007", "GAL3004"}, codes)
	require.Len(t, res.Objects, 1, "only the VirtualService is accepted")
	require.Equal(t, []string{"set.yaml"}, res.Files)
	require.Equal(t, api.Counts{Errors: 2, Warnings: 1}, res.Counts())
}

func TestCheckOptions(t *testing.T) {
	res := galley.New(galley.Options{DefaultNamespace: "shop"}).CheckBytes("vs.yaml", []byte(strings.Replace(vs, ", namespace: shop", "", 1)))
	require.Equal(t, api.Key("VirtualService/shop/reviews"), res.Objects[0].Key())

	hosts := hostSet{"reviews.shop.svc.cluster.local": true}
	fs := galley.Check(res.Objects, galley.Options{Hosts: hosts})
	for _, f := range fs {
		require.NotEqual(t, api.CodeUnverifiedHost, f.Code, "the registry knows the host")
	}
}

type hostSet map[string]bool

func (h hostSet) HasHost(host string) bool { return h[host] }

func TestCheckSources(t *testing.T) {
	res := galley.New(galley.Options{}).CheckSources([]string{"../../examples/bookstore"}, map[string][]byte{"<stdin>": []byte(vs)})
	require.Len(t, res.Files, 7)
	require.Equal(t, "<stdin>", res.Files[6])
	found := false
	for _, f := range res.Findings {
		found = found || f.File == "<stdin>"
	}
	require.True(t, found)
}

// TestReadmeDocumentsEveryCode keeps the README's code table in step with
// api.Codes.
func TestReadmeDocumentsEveryCode(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	for _, c := range api.Codes() {
		row := "| " + string(c.Code) + " | " + strings.ToLower(c.Severity.String())
		require.Contains(t, string(readme), row, "README.md lacks a table row for %s (%s)", c.Code, c.Title)
	}
}
