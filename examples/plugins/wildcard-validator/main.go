// Command wildcard-validator is the example validator plugin: it forbids
// wildcard hosts ("*", "*.example.com") in VirtualServices, Gateways,
// ServiceEntries, DestinationRules and Sidecar egress, except in the
// namespaces its config allows. galley blocks a change it finds an error in
// and keeps serving the last accepted config. See docs/plugins.md.
//
//   - name: no-wildcards
//     kind: validator
//     path: /usr/local/lib/meshd/wildcard-validator
//     sha256: <sha256sum of the binary>
//     config:
//     allowNamespaces: [istio-system]
//     severity: error
package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/sdk"
)

var version = "0.1.0"

// Config is the plugin's config section.
type Config struct {
	AllowNamespaces []string `json:"allowNamespaces" doc:"namespaces whose objects may use wildcard hosts"`
	Severity        string   `json:"severity" allowed:"error,warning" doc:"error blocks the change, warning only reports it"`
}

// Code is the finding code this plugin reports.
const Code api.Code = "WILDCARD001"

type validator struct{ cfg Config }

// Validate reports every wildcard host outside the allowed namespaces.
func (v *validator) Validate(ctx context.Context, objs []*api.Object) ([]api.Finding, error) {
	sev := api.SeverityError
	if v.cfg.Severity == "warning" {
		sev = api.SeverityWarning
	}
	var out []api.Finding
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if slices.Contains(v.cfg.AllowNamespaces, o.Namespace) {
			continue
		}
		for _, h := range hosts(o) {
			if strings.Contains(h.value, "*") {
				out = append(out, api.Finding{
					Code: Code, Severity: sev, Object: o.Key(), Field: h.field,
					Message: fmt.Sprintf("wildcard host %q is not allowed in namespace %s; name the hosts (allowed in: %s)", h.value, o.Namespace, allowed(v.cfg.AllowNamespaces)),
				})
			}
		}
	}
	return out, nil
}

func allowed(ns []string) string {
	if len(ns) == 0 {
		return "no namespace"
	}
	return strings.Join(ns, ", ")
}

type host struct{ field, value string }

func list(base string, hs []string) []host {
	out := make([]host, len(hs))
	for i, h := range hs {
		out[i] = host{fmt.Sprintf("%s[%d]", base, i), h}
	}
	return out
}

// hosts returns the host fields of the kinds that have them.
func hosts(o *api.Object) []host {
	switch s := o.Spec.(type) {
	case *networking.VirtualService:
		return list("spec.hosts", s.GetHosts())
	case *networking.ServiceEntry:
		return list("spec.hosts", s.GetHosts())
	case *networking.DestinationRule:
		return []host{{"spec.host", s.GetHost()}}
	case *networking.Gateway:
		var out []host
		for i, srv := range s.GetServers() {
			for j, h := range srv.GetHosts() {
				// Gateway hosts are namespace/host; the namespace part may be "*" legitimately.
				_, name, found := strings.Cut(h, "/")
				if !found {
					name = h
				}
				out = append(out, host{fmt.Sprintf("spec.servers[%d].hosts[%d]", i, j), name})
			}
		}
		return out
	case *networking.Sidecar:
		var out []host
		for i, eg := range s.GetEgress() {
			for j, h := range eg.GetHosts() {
				_, name, _ := strings.Cut(h, "/")
				if name != "*" { // "./*" style: every service of a namespace is the point of Sidecar egress
					out = append(out, host{fmt.Sprintf("spec.egress[%d].hosts[%d]", i, j), name})
				}
			}
		}
		return out
	}
	return nil
}

func main() {
	v := &validator{cfg: Config{Severity: "error"}}
	sdk.ServeValidator(
		sdk.Info{Name: "wildcard-validator", Version: version, Description: "forbids wildcard hosts outside allowed namespaces"},
		v, sdk.WithConfig(&v.cfg),
	)
}
