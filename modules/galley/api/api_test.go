package api_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/meshd/meshd/modules/galley/api"
)

func TestKinds(t *testing.T) {
	ks := api.Kinds()
	require.Len(t, ks, 10)
	ks[0] = api.Kind{}
	require.NotEqual(t, api.Kind{}, api.Kinds()[0], "Kinds returns a copy")

	require.Equal(t, "networking.istio.io/VirtualService", api.KindVirtualService.String())
	require.Equal(t, []string{"v1", "v1beta1", "v1alpha3"}, api.KindSidecar.Versions())
	require.Equal(t, []string{"v1", "v1beta1"}, api.KindAuthorizationPolicy.Versions())
	require.True(t, api.KindGateway.AcceptsVersion("v1alpha3"))
	require.False(t, api.KindPeerAuthentication.AcceptsVersion("v1alpha3"))
	require.False(t, api.Kind{Group: "apps", Kind: "Deployment"}.Supported())
	require.Nil(t, api.Kind{Group: "apps", Kind: "Deployment"}.Versions())

	k, ok := api.KindByName("RequestAuthentication")
	require.True(t, ok)
	require.Equal(t, api.KindRequestAuthentication, k)

	g, v := api.SplitAPIVersion("security.istio.io/v1beta1")
	require.Equal(t, [2]string{"security.istio.io", "v1beta1"}, [2]string{g, v})
	g, v = api.SplitAPIVersion("v1")
	require.Equal(t, [2]string{"", "v1"}, [2]string{g, v})
}

func TestKey(t *testing.T) {
	o := &api.Object{Kind: api.KindDestinationRule, Namespace: "bookstore", Name: "reviews"}
	require.Equal(t, api.Key("DestinationRule/bookstore/reviews"), o.Key())
	kind, ns, name, ok := o.Key().Parts()
	require.True(t, ok)
	require.Equal(t, []string{"DestinationRule", "bookstore", "reviews"}, []string{kind, ns, name})
	_, _, _, ok = api.Key("nope").Parts()
	require.False(t, ok)
}

func TestLines(t *testing.T) {
	l := api.NewLines(8)
	spec := l.AddField(-1, "spec", 10)
	http := l.AddField(spec, "http", 11)
	r0 := l.AddItem(http, 0, 12)
	route := l.AddField(r0, "route", 13)
	d1 := l.AddItem(route, 1, 16)
	weight := l.AddField(d1, "weight", 17)
	meta := l.AddField(-1, "metadata", 2)
	labels := l.AddField(meta, "labels", 3)
	l.AddMapKey(labels, "app.kubernetes.io/name", 4)

	line, ok := l.Line("spec.http[0].route[1].weight")
	require.True(t, ok)
	require.Equal(t, 17, line)
	line, ok = l.Line("metadata.labels[app.kubernetes.io/name]")
	require.True(t, ok)
	require.Equal(t, 4, line)
	_, ok = l.Line("spec.http[0].route[2]")
	require.False(t, ok)
	require.Equal(t, 13, l.Nearest("spec.http[0].route[2].weight"))
	require.Equal(t, 0, l.Nearest("status"))
	require.Equal(t, 11, l.Nearest("spec.http[0"), "malformed paths resolve as far as they parse")
	require.Equal(t, "spec.http[0].route[1].weight", l.Path(weight))
	require.Equal(t, 9, l.Len())

	m := l.Map()
	require.Equal(t, 16, m["spec.http[0].route[1]"])
	require.Equal(t, 4, m["metadata.labels[app.kubernetes.io/name]"])

	var nilLines *api.Lines
	require.Equal(t, 0, nilLines.Nearest("spec"))
	require.Nil(t, nilLines.Map())

	o := &api.Object{Source: api.Source{File: "f", Line: 9}, Lines: l}
	require.Equal(t, 17, o.Line("spec.http[0].route[1].weight"))
	require.Equal(t, 9, o.Line("nothing.here"))
}

func TestSeverity(t *testing.T) {
	b, err := json.Marshal(api.Finding{Code: api.CodeHost, Severity: api.SeverityWarning, Message: "m"})
	require.NoError(t, err)
	require.JSONEq(t, `{"code":"GAL2003","severity":"WARNING","message":"m"}`, string(b))
	var f api.Finding
	require.NoError(t, json.Unmarshal([]byte(`{"code":"GAL2003","severity":"error","message":"m"}`), &f))
	require.Equal(t, api.SeverityError, f.Severity)
	require.Error(t, json.Unmarshal([]byte(`{"severity":"fatal"}`), &f))
	_, err = json.Marshal(api.Finding{})
	require.Error(t, err, "a finding without severity cannot be encoded")
}

func TestFindingString(t *testing.T) {
	f := api.Finding{Code: api.CodeDuration, Severity: api.SeverityError, Object: "VirtualService/ns/a", File: "a.yaml", Line: 7, Field: "spec.http[0].timeout", Message: "too short"}
	require.Equal(t, "a.yaml:7: ERROR GAL2007 VirtualService/ns/a: spec.http[0].timeout: too short", f.String())
	f = api.Finding{Code: api.CodeSyntax, Severity: api.SeverityError, File: "b.yaml", Line: 3, Message: "bad"}
	require.Equal(t, "b.yaml:3: ERROR GAL1001: bad", f.String())
}

func TestSortFindings(t *testing.T) {
	fs := []api.Finding{
		{File: "b", Line: 1, Code: "X", Severity: api.SeverityError},
		{File: "a", Line: 9, Code: "X", Severity: api.SeverityWarning},
		{File: "a", Line: 2, Code: "Y", Severity: api.SeverityInfo},
		{File: "a", Line: 2, Code: "X", Severity: api.SeverityError},
		{File: "a", Line: 2, Code: "X", Severity: api.SeverityError},
	}
	fs = api.SortFindings(fs)
	require.Len(t, fs, 4, "exact duplicates are dropped")
	var got []string
	for _, f := range fs {
		got = append(got, f.File+string(f.Code))
	}
	require.Equal(t, []string{"aX", "aY", "aX", "bX"}, got)
	require.Equal(t, api.Counts{Errors: 2, Warnings: 1, Infos: 1}, api.CountFindings(fs))
	require.True(t, api.HasErrors(fs))
	require.False(t, api.HasErrors(fs[1:3]))
}

func TestCodes(t *testing.T) {
	codes := api.Codes()
	require.True(t, slices.IsSortedFunc(codes, func(a, b api.CodeInfo) int { return strings.Compare(string(a.Code), string(b.Code)) }))
	seen := map[api.Code]bool{}
	for _, c := range codes {
		require.False(t, seen[c.Code], "duplicate %s", c.Code)
		seen[c.Code] = true
		require.NotEmpty(t, c.Title)
		require.Contains(t, []string{"decode", "validate", "analyze", "serve"}, c.Stage)
		stage := map[byte]string{'1': "decode", '2': "validate", '3': "analyze", '4': "serve"}[c.Code[3]]
		require.Equal(t, stage, c.Stage, string(c.Code))
		got, ok := api.LookupCode(c.Code)
		require.True(t, ok)
		require.Equal(t, c, got)
	}
	_, ok := api.LookupCode("GAL9999")
	require.False(t, ok)
}

func TestSnapshot(t *testing.T) {
	mk := func(k api.Kind, ns, name string) *api.Object {
		return &api.Object{Kind: k, Namespace: ns, Name: name}
	}
	first := mk(api.KindVirtualService, "b", "x")
	objs := []*api.Object{
		first,
		mk(api.KindVirtualService, "a", "z"),
		mk(api.KindVirtualService, "a", "y"),
		mk(api.KindVirtualService, "b", "x"), // duplicate: the first wins
		mk(api.KindGateway, "a", "gw"),
		nil,
	}
	s := api.NewSnapshot(7, objs)
	require.Equal(t, uint64(7), s.Revision())
	require.Equal(t, 4, s.Len())
	var names []string
	for _, o := range s.List(api.KindVirtualService) {
		names = append(names, o.Namespace+"/"+o.Name)
	}
	require.Equal(t, []string{"a/y", "a/z", "b/x"}, names)
	got, ok := s.Get("VirtualService/b/x")
	require.True(t, ok)
	require.Same(t, first, got)

	list := s.List(api.KindVirtualService)
	list[0] = nil
	require.NotNil(t, s.List(api.KindVirtualService)[0], "List returns a copy")

	n := 0
	for range s.All(api.KindVirtualService) {
		n++
		break
	}
	require.Equal(t, 1, n)
	require.Len(t, s.Objects(), 4)
	require.Equal(t, api.KindGateway, s.Objects()[3].Kind, "kinds in Kinds order")

	var empty *api.Snapshot
	require.Zero(t, empty.Len())
	require.Nil(t, empty.List(api.KindGateway))
	_, ok = empty.Get("x")
	require.False(t, ok)
}
