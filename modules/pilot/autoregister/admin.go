package autoregister

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	pilotapi "github.com/meshd/meshd/modules/pilot/api"
)

// zEntry is one workload as /debug/autoregisterz shows it.
type zEntry struct {
	Workload   string             `json:"workload"`
	Streams    []zStream          `json:"streams"`
	Registered *pilotapi.Workload `json:"registered,omitempty"`
	Refused    string             `json:"refused,omitempty"`
	Health     *zHealth           `json:"health,omitempty"`
	RemoveAt   time.Time          `json:"removeAt,omitzero"`
}

type zStream struct {
	ConnID   string `json:"connId"`
	Identity string `json:"identity"`
	Verified bool   `json:"identityVerified"`
	Group    string `json:"group"`
	Address  string `json:"address"`
}

type zHealth struct {
	Healthy bool      `json:"healthy"`
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at"`
}

// autoregisterz serves GET /debug/autoregisterz: every workload an agent
// asked to register, what was registered or why not, its health and when
// it goes.
func (m *Module) autoregisterz(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	out := make([]zEntry, 0, len(m.entries))
	for _, e := range m.entries {
		z := zEntry{Workload: e.key.String(), Refused: e.refused, RemoveAt: e.removeAt, Streams: []zStream{}}
		if e.registered != nil {
			r := *e.registered
			z.Registered = &r
		}
		if e.health != nil {
			z.Health = &zHealth{Healthy: e.health.healthy, Message: e.health.message, At: e.health.at}
		}
		for _, c := range e.conns {
			z.Streams = append(z.Streams, zStream{ConnID: c.id, Identity: c.proxy.Identity, Verified: c.proxy.IdentityVerified,
				Group: c.proxy.Metadata[MetaGroup], Address: c.proxy.IP})
		}
		slices.SortFunc(z.Streams, func(a, b zStream) int { return strings.Compare(a.ConnID, b.ConnID) })
		out = append(out, z)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b zEntry) int { return strings.Compare(a.Workload, b.Workload) })
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
