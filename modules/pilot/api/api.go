// Package api is what the pilot module offers other modules: registering
// workloads that join at run time (the VM agent) and the events pilot
// publishes. Modules get the implementation from the host:
//
//	reg, err := core.Dep[api.Registrar](ctx, "pilot")
//	err = reg.RegisterWorkload(api.Workload{Name: "vm-1", Namespace: "shop", Address: "10.0.0.7", ...})
//
// Discovery modules (Kubernetes, Consul, plugins) add their registry
// source through registry.Adder, which the pilot module implements too:
//
//	add, err := core.Dep[registry.Adder](ctx, "pilot")
//	err = add.AddSource("consul", src)
package api

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"

	"github.com/meshd/meshd/core/bus"
)

// Workload is a workload that joined at run time. It is the run-time twin
// of a WorkloadEntry: ServiceEntries with a workloadSelector in its
// namespace select it by its labels, exactly as they select
// WorkloadEntries.
type Workload struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Address   string            `json:"address"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Ports maps a service port name to the port the workload listens on,
	// as WorkloadEntry.ports does.
	Ports          map[string]uint32 `json:"ports,omitempty"`
	ServiceAccount string            `json:"serviceAccount,omitempty"`
	// Locality is region/zone/subzone.
	Locality string `json:"locality,omitempty"`
	Network  string `json:"network,omitempty"`
	// Weight is the load-balancing weight; 0 means 1.
	Weight uint32 `json:"weight,omitempty"`
	// Healthy is the workload's own health check result; unhealthy
	// workloads are kept (and shown) but receive no traffic.
	Healthy bool `json:"healthy"`
}

var (
	// Kubernetes object names (RFC 1123 subdomains) and namespaces
	// (labels): what a WorkloadEntry could be called.
	nameRE      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// Validate checks a registration.
func (w Workload) Validate() error {
	var errs []error
	switch {
	case w.Name == "":
		errs = append(errs, errors.New("name is required"))
	case len(w.Name) > 253 || !nameRE.MatchString(w.Name):
		errs = append(errs, fmt.Errorf("name %q is not a lowercase RFC 1123 name", w.Name))
	}
	switch {
	case w.Namespace == "":
		errs = append(errs, errors.New("namespace is required"))
	case len(w.Namespace) > 63 || !namespaceRE.MatchString(w.Namespace):
		errs = append(errs, fmt.Errorf("namespace %q is not a lowercase RFC 1123 label", w.Namespace))
	}
	if _, err := netip.ParseAddr(w.Address); err != nil {
		errs = append(errs, fmt.Errorf("address %q is not an IP address", w.Address))
	}
	for name, p := range w.Ports {
		if p == 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("port %s: %d out of range", name, p))
		}
	}
	return errors.Join(errs...)
}

// Registrar registers workloads that join at run time. The VM agent uses
// it; the admin API (PUT/DELETE /registry/workloads/{namespace}/{name})
// is the same thing over HTTP.
type Registrar interface {
	// RegisterWorkload adds or replaces a workload.
	RegisterWorkload(Workload) error
	// DeregisterWorkload removes a workload and reports whether it existed.
	DeregisterWorkload(namespace, name string) bool
	// Workloads lists the registered workloads by namespace and name.
	Workloads() []Workload
}

// TopicServicesChanged is the topic of ServicesChanged.
const TopicServicesChanged bus.Topic = "pilot.services.changed"

// ServicesChanged announces a new registry view.
type ServicesChanged struct {
	// Version is the registry view's version.
	Version uint64
	// Definitions says services were added, removed or redefined (a full
	// push); otherwise only the endpoints of Endpoints changed.
	Definitions bool
	// Endpoints lists host/namespace of the services whose endpoints alone
	// changed.
	Endpoints []string
}

// Topic implements bus.Event.
func (ServicesChanged) Topic() bus.Topic { return TopicServicesChanged }
