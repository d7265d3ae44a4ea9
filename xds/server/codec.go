package server

import (
	"sync/atomic"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec we delegate to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// preEncoded is a message already in wire form. The stream wrappers send
// xDS responses as one: a small header of their own plus the snapshot's
// shared resource bytes, so gRPC copies them to the socket and nothing is
// marshalled per proxy.
type preEncoded struct{ data mem.BufferSlice }

// codec is the proto codec with two additions: a *preEncoded message is
// passed through as is, and a state-of-the-world request's resource names
// are decoded into the snapshots' own strings (names) rather than fresh
// ones. It is forced on meshd's xDS gRPC servers, so the other services on
// them (CSR, access logs) get plain proto encoding.
type codec struct {
	names *atomic.Pointer[map[string]string]
}

var protoCodec = encoding.GetCodecV2("proto")

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preEncoded); ok {
		return p.data, nil
	}
	return protoCodec.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if req, ok := v.(*discovery.DiscoveryRequest); ok && c.names != nil {
		var b []byte
		if len(data) == 1 {
			b = data[0].ReadOnlyData()
		} else {
			buf := data.MaterializeToBuffer(bufPool)
			defer buf.Free()
			b = buf.ReadOnlyData()
		}
		if decodeRequest(b, req, *c.names.Load()) {
			return nil
		}
		proto.Reset(req)
	}
	return protoCodec.Unmarshal(data, v)
}

// decodeRequest decodes a DiscoveryRequest, taking resource names from
// names where it has them. An Envoy's EDS request names every cluster, and
// repeats them in every ACK: with a thousand clusters, decoding them as
// fresh strings is most of what a request costs. It returns false for
// anything unusual (then the proto codec decodes the request and reports
// errors). Nothing it returns aliases b, which gRPC reuses.
func decodeRequest(b []byte, req *discovery.DiscoveryRequest, names map[string]string) bool {
	str := func(v []byte) (string, bool) { return string(v), utf8.Valid(v) }
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType { // every field is length-delimited
			return false
		}
		b = b[n:]
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var ok bool
		switch num {
		case 1:
			req.VersionInfo, ok = str(v)
		case 2:
			if req.Node != nil {
				return false
			}
			req.Node = new(corev3.Node)
			ok = proto.Unmarshal(v, req.Node) == nil
		case 3:
			s, known := names[string(v)]
			if !known {
				s, ok = str(v)
			}
			ok = ok || known
			req.ResourceNames = append(req.ResourceNames, s)
		case 4:
			req.TypeUrl, ok = str(v)
		case 5:
			req.ResponseNonce, ok = str(v)
		case 6:
			if req.ErrorDetail != nil {
				return false
			}
			req.ErrorDetail = new(rpcstatus.Status)
			ok = proto.Unmarshal(v, req.ErrorDetail) == nil
		}
		if !ok {
			return false
		}
	}
	return true
}

// Name is "proto": on the wire this is the proto codec.
func (codec) Name() string { return "proto" }

var bufPool = mem.DefaultBufferPool()

// encodeSotw encodes a DiscoveryResponse: version_info (1), type_url (4),
// nonce (5), then the resources (2). Field order does not matter to proto
// parsers; putting the shared bytes last lets them go out uncopied.
func encodeSotw(r *sotwResp, nonce string) (*preEncoded, int) {
	v, tu := r.snap.version, r.snap.typeURL
	hdr := protowire.SizeTag(1) + protowire.SizeBytes(len(v)) +
		protowire.SizeTag(4) + protowire.SizeBytes(len(tu)) +
		protowire.SizeTag(5) + protowire.SizeBytes(len(nonce))
	appendHdr := func(b []byte) []byte {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, v)
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, tu)
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		return protowire.AppendString(b, nonce)
	}
	if r.all {
		blob := r.snap.sotwResources()
		h := appendHdr(make([]byte, 0, hdr))
		return &preEncoded{data: mem.BufferSlice{mem.SliceBuffer(h), mem.SliceBuffer(blob)}}, len(blob)
	}
	n := 0
	for _, e := range r.sel {
		n += len(e.rec)
	}
	b := pooled(hdr + n)
	*b = appendHdr((*b)[:0])
	for _, e := range r.sel {
		*b = append(*b, e.rec...)
	}
	return &preEncoded{data: mem.BufferSlice{mem.NewBuffer(b, bufPool)}}, n
}

// encodeDelta encodes a DeltaDiscoveryResponse: system_version_info (1),
// type_url (4), nonce (5), removed_resources (6), then resources (2).
func encodeDelta(r *deltaResp, nonce string) (*preEncoded, int) {
	v, tu := r.snap.version, r.snap.typeURL
	hdr := protowire.SizeTag(1) + protowire.SizeBytes(len(v)) +
		protowire.SizeTag(4) + protowire.SizeBytes(len(tu)) +
		protowire.SizeTag(5) + protowire.SizeBytes(len(nonce))
	for _, name := range r.removed {
		hdr += protowire.SizeTag(6) + protowire.SizeBytes(len(name))
	}
	appendHdr := func(b []byte) []byte {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, v)
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, tu)
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, nonce)
		for _, name := range r.removed {
			b = protowire.AppendTag(b, 6, protowire.BytesType)
			b = protowire.AppendString(b, name)
		}
		return b
	}
	if r.all {
		blob := r.snap.deltaResources()
		h := appendHdr(make([]byte, 0, hdr))
		return &preEncoded{data: mem.BufferSlice{mem.SliceBuffer(h), mem.SliceBuffer(blob)}}, len(blob)
	}
	n := 0
	for _, e := range r.send {
		n += e.deltaRecLen()
	}
	b := pooled(hdr + n)
	*b = appendHdr((*b)[:0])
	for _, e := range r.send {
		*b = e.appendDeltaRec(*b)
	}
	return &preEncoded{data: mem.BufferSlice{mem.NewBuffer(b, bufPool)}}, n
}

// pooled returns a buffer of capacity at least n from gRPC's pool; gRPC
// returns it to the pool once written.
func pooled(n int) *[]byte {
	if mem.IsBelowBufferPoolingThreshold(n) {
		b := make([]byte, 0, n)
		return &b
	}
	b := bufPool.Get(n)
	*b = (*b)[:0]
	return b
}
