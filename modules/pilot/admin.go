package pilot

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"

	"github.com/meshd/meshd/core/admin"

	"github.com/meshd/meshd/core"
	galleyapi "github.com/meshd/meshd/modules/galley/api"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// maxWorkloadBody bounds a registration request; a workload is a few
// hundred bytes.
const maxWorkloadBody = 64 << 10

// routes adds pilot's admin routes:
//
//	GET    /debug/registryz                          services, endpoints and registry conflicts
//	GET    /debug/pilotz                             index version, readiness, last pushes
//	GET    /debug/securityz[?namespace=]             per workload port: mTLS mode and why, policies, proxyless fail-closed rules
//	GET    /registry/workloads                       run-time workloads
//	PUT    /registry/workloads/{namespace}/{name}    register or replace one
//	DELETE /registry/workloads/{namespace}/{name}    deregister one
func (m *Module) routes(ctx *core.Context) {
	ctx.HandleAdmin("GET /debug/registryz", http.HandlerFunc(m.registryz))
	ctx.HandleAdmin("GET /debug/pilotz", http.HandlerFunc(m.pilotz))
	ctx.HandleAdmin("GET /debug/securityz", http.HandlerFunc(m.securityz))
	ctx.HandleAdmin("GET /registry/workloads", http.HandlerFunc(m.listWorkloads))
	ctx.HandleAdmin("PUT /registry/workloads/{namespace}/{name}", http.HandlerFunc(m.putWorkload))
	ctx.HandleAdmin("DELETE /registry/workloads/{namespace}/{name}", http.HandlerFunc(m.deleteWorkload))
}

type errorBody struct {
	Error string `json:"error"`
}

// registryzService is one service as /debug/registryz shows it.
type registryzService struct {
	Hostname     string              `json:"hostname"`
	Namespace    string              `json:"namespace"`
	Source       string              `json:"source"`
	Resolution   string              `json:"resolution"`
	MeshExternal bool                `json:"meshExternal,omitempty"`
	Addresses    []string            `json:"addresses,omitempty"`
	ExportTo     []string            `json:"exportTo,omitempty"`
	Ports        []model.Port        `json:"ports"`
	Endpoints    []registryzEndpoint `json:"endpoints"`
}

type registryzEndpoint struct {
	Address     string            `json:"address"`
	Port        uint32            `json:"port"`
	ServicePort uint32            `json:"servicePort"`
	Workload    string            `json:"workload,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Locality    string            `json:"locality,omitempty"`
	Weight      uint32            `json:"weight"`
	Health      string            `json:"health"`
	Identity    string            `json:"identity,omitempty"`
}

// registryz serves the merged registry: every service with its endpoints,
// and every conflict between registries.
func (m *Module) registryz(w http.ResponseWriter, _ *http.Request) {
	ix := m.ix.Load()
	out := struct {
		Version   uint64              `json:"version"`
		Synced    bool                `json:"synced"`
		Pending   []string            `json:"pendingSources,omitempty"`
		Services  []registryzService  `json:"services"`
		Conflicts []registry.Conflict `json:"conflicts"`
		Workloads []pilotapi.Workload `json:"registeredWorkloads"`
	}{Synced: m.agg.Synced(), Pending: m.agg.Pending(), Services: []registryzService{}, Conflicts: []registry.Conflict{}, Workloads: m.Workloads()}
	if view := ix.Registry; view != nil {
		out.Version = view.Version
		if view.Conflicts != nil {
			out.Conflicts = view.Conflicts
		}
		for _, s := range view.Services {
			rs := registryzService{
				Hostname: s.Hostname, Namespace: s.Namespace, Source: s.Source, Resolution: s.Resolution.String(),
				MeshExternal: s.MeshExternal, Addresses: s.Addresses, ExportTo: s.ExportTo, Ports: s.Ports,
				Endpoints: make([]registryzEndpoint, 0, len(s.Endpoints)),
			}
			for _, e := range s.Endpoints {
				re := registryzEndpoint{
					Address: e.Address, Port: e.Port, ServicePort: e.ServicePort, Workload: e.Workload, Labels: e.Labels,
					Locality: e.Locality.String(), Weight: e.LBWeight(), Health: e.Health.String(),
				}
				if e.Namespace != "" && e.ServiceAccount != "" {
					re.Identity = "spiffe://" + m.mesh.TrustDomain + "/ns/" + e.Namespace + "/sa/" + e.ServiceAccount
				}
				rs.Endpoints = append(rs.Endpoints, re)
			}
			out.Services = append(out.Services, rs)
		}
	}
	admin.WriteJSON(w, http.StatusOK, out)
}

// pilotz serves pilot's own state: readiness, the index version and what
// it was built from, and the last pushes asked for.
func (m *Module) pilotz(w http.ResponseWriter, _ *http.Request) {
	ix := m.ix.Load()
	m.mu.Lock()
	st := m.state
	st.LastEDSNames = slices.Clone(st.LastEDSNames)
	m.mu.Unlock()
	count := func(k galleyapi.Kind) int {
		n := 0
		for range ix.Config.All(k) {
			n++
		}
		return n
	}
	services := 0
	if ix.Registry != nil {
		services = len(ix.Registry.Services)
	}
	admin.WriteJSON(w, http.StatusOK, struct {
		state
		RootNamespace    string   `json:"rootNamespace"`
		Registries       []string `json:"registries"`
		Services         int      `json:"services"`
		VirtualServices  int      `json:"virtualServices"`
		DestinationRules int      `json:"destinationRules"`
		Sidecars         int      `json:"sidecars"`
		Gateways         int      `json:"gateways"`
	}{
		state: st, RootNamespace: m.cfg.RootNamespace, Registries: m.cfg.Registries, Services: services,
		VirtualServices: count(galleyapi.KindVirtualService), DestinationRules: count(galleyapi.KindDestinationRule),
		Sidecars: count(galleyapi.KindSidecar), Gateways: count(galleyapi.KindGateway),
	})
}

func (m *Module) listWorkloads(w http.ResponseWriter, _ *http.Request) {
	list := m.Workloads()
	if list == nil {
		list = []pilotapi.Workload{}
	}
	admin.WriteJSON(w, http.StatusOK, list)
}

// putWorkload registers the workload in the body under the path's
// namespace and name (a body that names others is refused rather than
// silently renamed).
func (m *Module) putWorkload(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("namespace"), r.PathValue("name")
	var wl pilotapi.Workload
	dec := json.NewDecoder(io.LimitReader(r.Body, maxWorkloadBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wl); err != nil {
		admin.WriteJSON(w, http.StatusBadRequest, errorBody{"decode workload: " + err.Error()})
		return
	}
	if (wl.Namespace != "" && wl.Namespace != ns) || (wl.Name != "" && wl.Name != name) {
		admin.WriteJSON(w, http.StatusBadRequest, errorBody{"the body names " + wl.Namespace + "/" + wl.Name + " but the path " + ns + "/" + name})
		return
	}
	wl.Namespace, wl.Name = ns, name
	existed := slices.ContainsFunc(m.Workloads(), func(x pilotapi.Workload) bool { return x.Namespace == ns && x.Name == name })
	if err := m.RegisterWorkload(wl); err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, ErrTooManyWorkloads) {
			code = http.StatusTooManyRequests
		}
		admin.WriteJSON(w, code, errorBody{err.Error()})
		return
	}
	code := http.StatusCreated
	if existed {
		code = http.StatusOK
	}
	admin.WriteJSON(w, code, wl)
}

func (m *Module) deleteWorkload(w http.ResponseWriter, r *http.Request) {
	if !m.DeregisterWorkload(r.PathValue("namespace"), r.PathValue("name")) {
		admin.WriteJSON(w, http.StatusNotFound, errorBody{"no registered workload " + r.PathValue("namespace") + "/" + r.PathValue("name")})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
