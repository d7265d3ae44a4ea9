// Package alswire reads Envoy's access-log service messages
// (envoy.service.accesslog.v3.StreamAccessLogsMessage) straight from their
// wire form, without building the generated Go messages.
//
// The receiver sees tens of thousands of entries a second per core, and
// protobuf-go's generated decoder allocates some thirty objects for each
// HTTP entry (addresses, timestamps, durations, header maps) of which
// telemetry reads a dozen fields. This package walks the bytes once, keeps
// the fields telemetry needs as sub-slices of the input, and allocates
// nothing. It follows protobuf's decoding rules for what it reads: fields
// may come in any order, a repeated singular field means the last value (a
// message means the merge of all), a oneof keeps its last member, and a
// field whose wire type does not match is an unknown field and skipped.
// TestDifferential and FuzzDecode hold it to protobuf-go on those points.
//
// Unlike protobuf-go, a malformed entry does not void the entries before
// it: Next reports the error and the caller counts the rest as dropped.
package alswire

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed access-log message")

// Kind is the kind of entries a message carries.
type Kind uint8

// Kinds.
const (
	KindNone Kind = iota
	KindHTTP
	KindTCP
)

// Message is the top level of a StreamAccessLogsMessage: its identifier and
// where its entries are. Reuse one Message per stream; Parse resets it.
type Message struct {
	// HasIdentifier says the message carried an identifier (Envoy sends it
	// on the first message of a stream).
	HasIdentifier bool
	// Node holds the raw bytes of each occurrence of identifier.node; in
	// protobuf, their concatenation is the merged node.
	Node [][]byte
	// LogName is identifier.log_name.
	LogName []byte
	// Kind is the oneof member that won: HTTP or TCP entries, or none.
	Kind Kind

	lists [][]byte // entry containers of Kind, in order
	list  int      // index into lists of the container being read
	rest  []byte   // unread part of lists[list]
}

// Parse reads the top level of b. The sub-slices it keeps point into b.
func (m *Message) Parse(b []byte) error {
	m.HasIdentifier, m.LogName, m.Kind = false, nil, KindNone
	m.Node, m.lists, m.list, m.rest = m.Node[:0], m.lists[:0], 0, nil
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("message", n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			m.HasIdentifier = true
			if err := m.parseIdentifier(v); err != nil {
				return err
			}
		case 2, 3:
			k := KindHTTP
			if num == 3 {
				k = KindTCP
			}
			if m.Kind != k {
				// Another oneof member replaces what came before.
				m.Kind, m.lists = k, m.lists[:0]
			}
			m.lists = append(m.lists, v)
		}
	}
	if len(m.lists) > 0 {
		m.rest = m.lists[0]
	}
	return nil
}

func (m *Message) parseIdentifier(b []byte) error {
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("identifier", n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			m.Node = append(m.Node, v)
		case 2:
			m.LogName = v
		}
	}
	return nil
}

// Next returns the raw bytes of the next entry, or ok false at the end.
// Decode them with HTTPEntry.Decode or TCPEntry.Decode according to Kind.
// After an error, Next returns no more entries.
func (m *Message) Next() (entry []byte, ok bool, err error) {
	for {
		for len(m.rest) > 0 {
			num, typ, v, n := field(m.rest)
			if n < 0 {
				m.rest, m.list = nil, len(m.lists)
				return nil, false, malformed("entries", n)
			}
			m.rest = m.rest[n:]
			if num == 1 && typ == protowire.BytesType {
				return v, true, nil
			}
		}
		m.list++
		if m.list >= len(m.lists) {
			return nil, false, nil
		}
		m.rest = m.lists[m.list]
	}
}

// Remaining counts the entries Next has not returned yet, without decoding
// them. Malformed bytes end the count.
func (m *Message) Remaining() int {
	count := 0
	rest := m.rest
	for i := m.list; i < len(m.lists); i++ {
		if i > m.list {
			rest = m.lists[i]
		}
		for len(rest) > 0 {
			num, typ, _, n := field(rest)
			if n < 0 {
				return count
			}
			rest = rest[n:]
			if num == 1 && typ == protowire.BytesType {
				count++
			}
		}
	}
	return count
}

// field reads one field: its number, wire type, the payload of a
// length-delimited field, and the bytes consumed (negative on error).
func field(b []byte) (protowire.Number, protowire.Type, []byte, int) {
	// Fast path: a one-byte tag and, for a length-delimited field, a
	// one-byte length, which is most fields of an access-log entry.
	if len(b) >= 2 && b[0] < 0x80 && b[0] >= 8 {
		num, typ := protowire.Number(b[0]>>3), protowire.Type(b[0]&7)
		switch {
		case typ == protowire.BytesType && b[1] < 0x80:
			if end := 2 + int(b[1]); end <= len(b) {
				return num, typ, b[2:end], end
			}
		case typ == protowire.VarintType && b[1] < 0x80:
			return num, typ, nil, 2
		}
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, nil, n
	}
	if typ == protowire.BytesType {
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return 0, 0, nil, m
		}
		return num, typ, v, n + m
	}
	m := protowire.ConsumeFieldValue(num, typ, b[n:])
	if m < 0 {
		return 0, 0, nil, m
	}
	return num, typ, nil, n + m
}

// varintField reads one field and, when it is a varint, its value.
func varintField(b []byte) (protowire.Number, protowire.Type, []byte, uint64, int) {
	if len(b) >= 2 && b[0] < 0x80 && b[0] >= 8 && b[0]&7 == byte(protowire.VarintType) && b[1] < 0x80 {
		return protowire.Number(b[0] >> 3), protowire.VarintType, nil, uint64(b[1]), 2
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, nil, 0, n
	}
	if typ == protowire.VarintType {
		v, m := protowire.ConsumeVarint(b[n:])
		if m < 0 {
			return 0, 0, nil, 0, m
		}
		return num, typ, nil, v, n + m
	}
	num, typ, v, m := field(b)
	return num, typ, v, 0, m
}

func malformed(what string, n int) error {
	return fmt.Errorf("%w: %s: %v", ErrMalformed, what, protowire.ParseError(n))
}

// Address is the part of an envoy.config.core.v3.Address telemetry reads.
type Address struct {
	// IP is socket_address.address (an IP address for the addresses Envoy
	// logs); empty for pipes and internal addresses.
	IP []byte
	// Port is socket_address.port_value.
	Port uint32
}

func (a *Address) decode(b []byte) error {
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("address", n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1: // socket_address; merges into an earlier one
			if err := a.decodeSocket(v); err != nil {
				return err
			}
		case 2, 3: // pipe, envoy_internal_address replace it
			*a = Address{}
		}
	}
	return nil
}

func (a *Address) decodeSocket(b []byte) error {
	for len(b) > 0 {
		num, typ, v, x, n := varintField(b)
		if n < 0 {
			return malformed("socket address", n)
		}
		b = b[n:]
		switch {
		case num == 2 && typ == protowire.BytesType:
			a.IP = v
		case num == 3 && typ == protowire.VarintType:
			a.Port = uint32(x)
		case num == 4 && typ == protowire.BytesType: // named_port replaces port_value
			a.Port = 0
		}
	}
	return nil
}

// Duration is a google.protobuf.Duration or Timestamp as sent.
type Duration struct {
	Seconds int64
	Nanos   int32
	// Set says the field was present.
	Set bool
}

func (d *Duration) decode(b []byte) error {
	d.Set = true
	for len(b) > 0 {
		num, typ, _, x, n := varintField(b)
		if n < 0 {
			return malformed("duration", n)
		}
		b = b[n:]
		if typ != protowire.VarintType {
			continue
		}
		switch num {
		case 1:
			d.Seconds = int64(x)
		case 2:
			d.Nanos = int32(x)
		}
	}
	return nil
}

// Common is the part of envoy.data.accesslog.v3.AccessLogCommon telemetry
// reads.
type Common struct {
	DownstreamRemote       Address
	DownstreamDirectRemote Address
	UpstreamRemote         Address
	// TLS says tls_properties was present (the downstream connection used TLS).
	TLS bool
	// PeerCert says the downstream peer presented a certificate.
	PeerCert bool
	// PeerURI and LocalURI are the first URI SANs of the peer's and the
	// proxy's own certificate.
	PeerURI, LocalURI []byte
	StartTime         Duration // seconds and nanos since the epoch
	// Duration is common.duration; ToLastDownstreamTx is
	// time_to_last_downstream_tx_byte, for proxies that do not send it.
	Duration           Duration
	ToLastDownstreamTx Duration
	UpstreamCluster    []byte
	// ResponseFlags has bit n-1 set for each true boolean field n of
	// envoy.data.accesslog.v3.ResponseFlags.
	ResponseFlags uint32
	Intermediate  bool
	AccessLogType int32
}

func (c *Common) decode(b []byte) error {
	for len(b) > 0 {
		num, typ, v, x, n := varintField(b)
		if n < 0 {
			return malformed("common properties", n)
		}
		b = b[n:]
		var err error
		switch typ {
		case protowire.BytesType:
			switch num {
			case 2:
				err = c.DownstreamRemote.decode(v)
			case 4:
				c.TLS = true
				err = c.decodeTLS(v)
			case 5:
				err = c.StartTime.decode(v)
			case 12:
				err = c.ToLastDownstreamTx.decode(v)
			case 13:
				err = c.UpstreamRemote.decode(v)
			case 15:
				c.UpstreamCluster = v
			case 16:
				err = c.decodeFlags(v)
			case 20:
				err = c.DownstreamDirectRemote.decode(v)
			case 23:
				err = c.Duration.decode(v)
			}
		case protowire.VarintType:
			switch num {
			case 27:
				c.Intermediate = x != 0
			case 33:
				c.AccessLogType = int32(x)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Common) decodeTLS(b []byte) error {
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("tls properties", n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 4:
			if err := firstURI(v, &c.LocalURI); err != nil {
				return err
			}
		case 5:
			c.PeerCert = true
			if err := firstURI(v, &c.PeerURI); err != nil {
				return err
			}
		}
	}
	return nil
}

// firstURI sets *uri to the first URI SAN of a CertificateProperties
// unless an earlier occurrence already did.
func firstURI(b []byte, uri *[]byte) error {
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("certificate properties", n)
		}
		b = b[n:]
		if num != 1 || typ != protowire.BytesType {
			continue
		}
		// One SubjectAltName: a oneof of uri (1) and dns (2); the last wins.
		var val []byte
		isURI := false
		for len(v) > 0 {
			sn, st, sv, m := field(v)
			if m < 0 {
				return malformed("subject alt name", m)
			}
			v = v[m:]
			if st != protowire.BytesType {
				continue
			}
			switch sn {
			case 1:
				val, isURI = sv, true
			case 2:
				val, isURI = nil, false
			}
		}
		if isURI && *uri == nil {
			if val == nil {
				val = []byte{}
			}
			*uri = val
		}
	}
	return nil
}

func (c *Common) decodeFlags(b []byte) error {
	for len(b) > 0 {
		num, typ, _, x, n := varintField(b)
		if n < 0 {
			return malformed("response flags", n)
		}
		b = b[n:]
		if typ != protowire.VarintType || num < 1 || num > 28 || num == 13 {
			continue
		}
		if x != 0 {
			c.ResponseFlags |= 1 << (num - 1)
		} else {
			c.ResponseFlags &^= 1 << (num - 1)
		}
	}
	return nil
}

// HTTPEntry is the part of an envoy.data.accesslog.v3.HTTPAccessLogEntry
// telemetry reads. Reuse one; Decode resets it.
type HTTPEntry struct {
	Common
	Protocol  int32 // HTTPAccessLogEntry.HTTPVersion
	Method    int32 // envoy.config.core.v3.RequestMethod
	Authority []byte
	Path      []byte
	UserAgent []byte
	RequestID []byte
	// RequestBodyBytes and ResponseBodyBytes are the body sizes.
	RequestBodyBytes  uint64
	ResponseBodyBytes uint64
	ResponseCode      uint32
	HasResponseCode   bool
	// GRPCStatus is the grpc-status response trailer, or header when there
	// is no trailer (a trailers-only response); nil when neither was logged.
	GRPCStatus []byte

	grpcHeader, grpcTrailer []byte
}

// Decode reads b, an HTTPAccessLogEntry.
func (e *HTTPEntry) Decode(b []byte) error {
	*e = HTTPEntry{}
	for len(b) > 0 {
		num, typ, v, x, n := varintField(b)
		if n < 0 {
			return malformed("http entry", n)
		}
		b = b[n:]
		var err error
		switch {
		case num == 1 && typ == protowire.BytesType:
			err = e.Common.decode(v)
		case num == 2 && typ == protowire.VarintType:
			e.Protocol = int32(x)
		case num == 3 && typ == protowire.BytesType:
			err = e.decodeRequest(v)
		case num == 4 && typ == protowire.BytesType:
			err = e.decodeResponse(v)
		}
		if err != nil {
			return err
		}
	}
	e.GRPCStatus = e.grpcTrailer
	if e.GRPCStatus == nil {
		e.GRPCStatus = e.grpcHeader
	}
	return nil
}

func (e *HTTPEntry) decodeRequest(b []byte) error {
	for len(b) > 0 {
		num, typ, v, x, n := varintField(b)
		if n < 0 {
			return malformed("request", n)
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			switch num {
			case 1:
				e.Method = int32(x)
			case 12:
				e.RequestBodyBytes = x
			}
		case protowire.BytesType:
			switch num {
			case 3:
				e.Authority = v
			case 5:
				e.Path = v
			case 6:
				e.UserAgent = v
			case 9:
				e.RequestID = v
			}
		}
	}
	return nil
}

func (e *HTTPEntry) decodeResponse(b []byte) error {
	for len(b) > 0 {
		num, typ, v, x, n := varintField(b)
		if n < 0 {
			return malformed("response", n)
		}
		b = b[n:]
		var err error
		switch typ {
		case protowire.VarintType:
			if num == 3 {
				e.ResponseBodyBytes = x
			}
		case protowire.BytesType:
			switch num {
			case 1: // google.protobuf.UInt32Value
				e.HasResponseCode = true
				err = decodeUInt32(v, &e.ResponseCode)
			case 4:
				err = grpcStatus(v, &e.grpcHeader)
			case 5:
				err = grpcStatus(v, &e.grpcTrailer)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func decodeUInt32(b []byte, out *uint32) error {
	for len(b) > 0 {
		num, typ, _, x, n := varintField(b)
		if n < 0 {
			return malformed("uint32 value", n)
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			*out = uint32(x)
		}
	}
	return nil
}

var grpcStatusKey = []byte("grpc-status")

// grpcStatus reads one map<string, string> entry and sets *out to its value
// when its key is grpc-status.
func grpcStatus(b []byte, out *[]byte) error {
	var key, val []byte
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("map entry", n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			key = v
		case 2:
			val = v
		}
	}
	if string(key) == string(grpcStatusKey) {
		if val == nil {
			val = []byte{}
		}
		*out = val
	}
	return nil
}

// TCPEntry is the part of an envoy.data.accesslog.v3.TCPAccessLogEntry
// telemetry reads. Reuse one; Decode resets it.
type TCPEntry struct {
	Common
	// ReceivedBytes and SentBytes are connection_properties: bytes from and
	// to the downstream.
	ReceivedBytes, SentBytes uint64
}

// Decode reads b, a TCPAccessLogEntry.
func (e *TCPEntry) Decode(b []byte) error {
	*e = TCPEntry{}
	for len(b) > 0 {
		num, typ, v, n := field(b)
		if n < 0 {
			return malformed("tcp entry", n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			if err := e.Common.decode(v); err != nil {
				return err
			}
		case 2:
			for len(v) > 0 {
				cn, ct, _, x, m := varintField(v)
				if m < 0 {
					return malformed("connection properties", m)
				}
				v = v[m:]
				if ct != protowire.VarintType {
					continue
				}
				switch cn {
				case 1:
					e.ReceivedBytes = x
				case 2:
					e.SentBytes = x
				}
			}
		}
	}
	return nil
}
