package pilot

import (
	"hash/fnv"
	"slices"
	"strings"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	pilotapi "github.com/meshd/meshd/modules/pilot/api"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// hostIndex is what galley's analysis asks of the registry: which hosts
// discovery knows and which workloads run, to tell a route to a missing
// host or a selector that matches nothing from a correct one. It answers
// from discovery sources and run-time registrations only, never from the
// ServiceEntries galley itself accepted (galley checks those against the
// candidate config, so that deleting a ServiceEntry still reports the
// routes left dangling). It is immutable, so galley may call it from any
// goroutine.
type hostIndex struct {
	hosts     map[string]bool
	workloads map[string][]map[string]string // namespace -> label sets
	digest    uint64
}

var (
	_ galleyapi.HostIndex = (*hostIndex)(nil)
	_ interface {
		HasWorkload(string, map[string]string) bool
	} = (*hostIndex)(nil)
)

func newHostIndex(view *registry.View, registered []pilotapi.Workload) *hostIndex {
	h := &hostIndex{hosts: map[string]bool{}, workloads: map[string][]map[string]string{}}
	d := fnv.New64a()
	for _, s := range view.Services {
		if s.Source == registry.SourceConfig {
			continue
		}
		h.hosts[s.Hostname] = true
		d.Write([]byte(s.Hostname + "\x00"))
		for _, e := range s.Endpoints {
			if len(e.Labels) > 0 {
				ns := e.Namespace
				if ns == "" {
					ns = s.Namespace
				}
				h.workloads[ns] = append(h.workloads[ns], e.Labels)
				d.Write([]byte(ns + "\x00" + labelString(e.Labels) + "\x00"))
			}
		}
	}
	for _, w := range registered {
		h.workloads[w.Namespace] = append(h.workloads[w.Namespace], w.Labels)
		d.Write([]byte(w.Namespace + "\x00" + labelString(w.Labels) + "\x00"))
	}
	h.digest = d.Sum64()
	return h
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k+"="+l[k])
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}

// HasHost implements galleyapi.HostIndex.
func (h *hostIndex) HasHost(host string) bool { return h.hosts[host] }

// HasWorkload reports whether a workload in namespace carries every label
// of selector.
func (h *hostIndex) HasWorkload(namespace string, selector map[string]string) bool {
	for _, l := range h.workloads[namespace] {
		if model.LabelsMatch(selector, l) {
			return true
		}
	}
	return false
}

// hostIndexTaker is the part of galley's api.Galley pilot uses.
type hostIndexTaker interface {
	SetHostIndex(galleyapi.HostIndex)
}

// handOverHosts gives galley a new host index when what it would answer
// changed.
func (m *Module) handOverHosts(view *registry.View) {
	taker, ok := m.galley.(hostIndexTaker)
	if !ok {
		return
	}
	h := newHostIndex(view, m.config.Workloads())
	if m.hosts != nil && m.hosts.digest == h.digest {
		return
	}
	m.hosts = h
	taker.SetHostIndex(h)
}
