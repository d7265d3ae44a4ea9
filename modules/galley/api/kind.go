// Package api holds the types that galley hands to the rest of meshd: the
// config kinds it understands, decoded objects, findings and accepted
// snapshots. It carries no validation logic, so pilot, citadel and the CLI can
// import it without pulling in the decoder or the analyzers.
package api

import "strings"

// Kind names one Istio config kind by API group and kind name, for example
// networking.istio.io/VirtualService. It is comparable so it can key maps; the
// API versions a kind accepts are looked up with Versions.
type Kind struct {
	// Group is the API group, e.g. "networking.istio.io".
	Group string
	// Kind is the kind name as written in YAML, e.g. "VirtualService".
	Kind string
}

// API groups of the supported kinds.
const (
	GroupNetworking = "networking.istio.io"
	GroupSecurity   = "security.istio.io"
)

// The kinds galley decodes. Their specs are the istio.io/api Go types
// (networking/v1alpha3 and security/v1beta1; the newer API versions are Go
// aliases of the same types).
var (
	KindVirtualService        = Kind{Group: GroupNetworking, Kind: "VirtualService"}
	KindDestinationRule       = Kind{Group: GroupNetworking, Kind: "DestinationRule"}
	KindGateway               = Kind{Group: GroupNetworking, Kind: "Gateway"}
	KindServiceEntry          = Kind{Group: GroupNetworking, Kind: "ServiceEntry"}
	KindWorkloadEntry         = Kind{Group: GroupNetworking, Kind: "WorkloadEntry"}
	KindWorkloadGroup         = Kind{Group: GroupNetworking, Kind: "WorkloadGroup"}
	KindSidecar               = Kind{Group: GroupNetworking, Kind: "Sidecar"}
	KindPeerAuthentication    = Kind{Group: GroupSecurity, Kind: "PeerAuthentication"}
	KindAuthorizationPolicy   = Kind{Group: GroupSecurity, Kind: "AuthorizationPolicy"}
	KindRequestAuthentication = Kind{Group: GroupSecurity, Kind: "RequestAuthentication"}
)

// supportedKinds is ordered the way output lists kinds: networking first,
// then security, roughly in the order a reader meets them.
var supportedKinds = [...]Kind{
	KindServiceEntry,
	KindWorkloadEntry,
	KindWorkloadGroup,
	KindDestinationRule,
	KindVirtualService,
	KindGateway,
	KindSidecar,
	KindPeerAuthentication,
	KindAuthorizationPolicy,
	KindRequestAuthentication,
}

// Kinds returns the supported kinds. The slice is a fresh copy, so callers may
// sort or modify it.
func Kinds() []Kind {
	k := supportedKinds
	return k[:]
}

// The API versions Istio's CRDs serve. Networking kinds kept v1alpha3 and
// v1beta1 when v1 arrived; the security kinds never had v1alpha3.
var (
	networkingVersions = []string{"v1", "v1beta1", "v1alpha3"}
	securityVersions   = []string{"v1", "v1beta1"}
)

// Versions returns the API versions accepted for k, newest first, or nil for
// an unsupported kind.
func (k Kind) Versions() []string {
	if !k.Supported() {
		return nil
	}
	var v []string
	if k.Group == GroupNetworking {
		v = networkingVersions
	} else {
		v = securityVersions
	}
	return append([]string(nil), v...)
}

// AcceptsVersion reports whether apiVersion's version part is served for k.
func (k Kind) AcceptsVersion(version string) bool {
	if !k.Supported() {
		return false
	}
	list := securityVersions
	if k.Group == GroupNetworking {
		list = networkingVersions
	}
	for _, v := range list {
		if v == version {
			return true
		}
	}
	return false
}

// Supported reports whether galley decodes k.
func (k Kind) Supported() bool {
	for _, s := range supportedKinds {
		if s == k {
			return true
		}
	}
	return false
}

// String renders the kind as group/Kind, e.g. networking.istio.io/VirtualService.
func (k Kind) String() string {
	if k.Group == "" {
		return k.Kind
	}
	return k.Group + "/" + k.Kind
}

// KindByName finds a supported kind by its kind name alone ("VirtualService").
// Kind names are unique across the supported groups, which is what lets
// object keys use the bare name.
func KindByName(name string) (Kind, bool) {
	for _, s := range supportedKinds {
		if s.Kind == name {
			return s, true
		}
	}
	return Kind{}, false
}

// SplitAPIVersion splits an apiVersion such as "networking.istio.io/v1" into
// group and version. Core Kubernetes versions ("v1") have an empty group.
func SplitAPIVersion(apiVersion string) (group, version string) {
	if i := strings.LastIndexByte(apiVersion, '/'); i >= 0 {
		return apiVersion[:i], apiVersion[i+1:]
	}
	return "", apiVersion
}
