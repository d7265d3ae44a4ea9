package api

import (
	"time"

	"github.com/meshd/meshd/core/bus"
)

// SyncState is a proxy's state for one resource type, as istioctl
// proxy-status shows it.
type SyncState string

// Sync states.
const (
	// Synced: the proxy acknowledged the last response it was sent.
	Synced SyncState = "SYNCED"
	// Stale: a response was sent and is not acknowledged yet.
	Stale SyncState = "STALE"
	// Nacked: the proxy rejected the last response; it runs its last good
	// version and is not sent the rejected one again.
	Nacked SyncState = "NACKED"
	// NotSent: the proxy subscribed but nothing was sent (no generator for
	// the type, or nothing generated yet).
	NotSent SyncState = "NOT SENT"
)

// ProxyStatus is one xDS stream's sync state (/debug/syncz, meshd status).
type ProxyStatus struct {
	// ID is the node ID.
	ID string `json:"id"`
	// ConnID tells apart several streams of one proxy (grpc-go opens one
	// per xDS client, Envoy one per ADS connection).
	ConnID string `json:"connId"`
	// Type is sidecar, gateway or proxyless.
	Type ProxyType `json:"type"`
	// Namespace and ServiceAccount are from the node (or its certificate).
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Identity is the SPIFFE ID; IdentityVerified says it comes from a
	// verified client certificate rather than node metadata.
	Identity         string `json:"identity,omitempty"`
	IdentityVerified bool   `json:"identityVerified"`
	// ClusterID is the CLUSTER_ID metadata.
	ClusterID string `json:"clusterId,omitempty"`
	// Address is the peer address of the stream.
	Address string `json:"address"`
	// Delta says the stream speaks incremental xDS.
	Delta bool `json:"delta"`
	// ConnectedAt is when the stream's first request arrived.
	ConnectedAt time.Time `json:"connectedAt"`
	// Types has one entry per subscribed type URL, in push order.
	Types []TypeStatus `json:"types"`
}

// ConfigRevision sums up which config revision the stream runs, from the
// RevisionAcked of its types that were sent something: low is the lowest,
// high the highest. low == high means every type runs the same revision;
// low == 0 means some type has acknowledged nothing built from a revision
// yet. Both are 0 when nothing was sent.
func (p ProxyStatus) ConfigRevision() (low, high uint64) {
	first := true
	for _, t := range p.Types {
		if t.State == NotSent {
			continue
		}
		if first || t.RevisionAcked < low {
			low = t.RevisionAcked
		}
		high = max(high, t.RevisionAcked)
		first = false
	}
	return low, high
}

// TypeStatus is the sync state of one type on one stream.
type TypeStatus struct {
	TypeURL string    `json:"typeUrl"`
	State   SyncState `json:"state"`
	// VersionSent and NonceSent describe the last response sent.
	VersionSent string    `json:"versionSent,omitempty"`
	NonceSent   string    `json:"nonceSent,omitempty"`
	SentAt      time.Time `json:"sentAt,omitzero"`
	// ResourcesSent and BytesSent are the size of that response.
	ResourcesSent int `json:"resourcesSent"`
	BytesSent     int `json:"bytesSent"`
	// VersionAcked and NonceAcked describe the last response acknowledged.
	VersionAcked string    `json:"versionAcked,omitempty"`
	NonceAcked   string    `json:"nonceAcked,omitempty"`
	AckedAt      time.Time `json:"ackedAt,omitzero"`
	// TimeToAckMillis is how long the last acknowledged response took from
	// send to ACK.
	TimeToAckMillis float64 `json:"timeToAckMillis,omitempty"`
	// Responses counts responses sent of this type on this stream.
	Responses uint64 `json:"responses"`
	// RevisionSent is the config revision (PushRequest.Revision) the
	// resources last sent were built from, and RevisionAcked that of the
	// resources the proxy runs: what it last acknowledged. Both are the
	// latest revision whose config gives this proxy the same resources, so
	// a config change that does not touch a proxy's resources still moves
	// it to the new revision without a response. Zero when unknown
	// (nothing acknowledged yet, or pushes carry no revision).
	RevisionSent  uint64 `json:"revisionSent,omitempty"`
	RevisionAcked uint64 `json:"revisionAcked,omitempty"`
	// LastNack is the last rejection, kept after later ACKs for the record.
	LastNack *Nack `json:"lastNack,omitempty"`
}

// Nack is a rejected response.
type Nack struct {
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	At      time.Time `json:"at"`
	// Code and Message are the error_detail the proxy sent.
	Code    int32  `json:"code"`
	Message string `json:"message"`
	// Resources names the resources of the rejected response that the
	// message mentions: the config objects that caused the rejection.
	Resources []string `json:"resources,omitempty"`
}

// Event topics the xds module publishes.
const (
	TopicProxyConnected    bus.Topic = "xds.proxy.connected"
	TopicProxyDisconnected bus.Topic = "xds.proxy.disconnected"
	TopicProxyNacked       bus.Topic = "xds.proxy.nacked"
)

// ProxyConnected is published when a stream sends its first request. Proxy
// carries the metadata VM self-registration reads (IP, labels, namespace,
// service account, identity).
type ProxyConnected struct {
	ConnID string
	Proxy  *Proxy
}

// Topic implements bus.Event.
func (ProxyConnected) Topic() bus.Topic { return TopicProxyConnected }

// ProxyDisconnected is published when a stream ends.
type ProxyDisconnected struct {
	ConnID string
	Proxy  *Proxy
}

// Topic implements bus.Event.
func (ProxyDisconnected) Topic() bus.Topic { return TopicProxyDisconnected }

// ProxyNacked is published when a proxy rejects a response.
type ProxyNacked struct {
	ConnID  string
	ProxyID string
	TypeURL string
	Nack    Nack
}

// Topic implements bus.Event.
func (ProxyNacked) Topic() bus.Topic { return TopicProxyNacked }
