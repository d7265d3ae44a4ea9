package server

import (
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec we delegate to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// preEncoded is a message already in wire form. The stream wrappers send
// xDS responses as one: a small header of their own plus the snapshot's
// shared resource bytes, so gRPC copies them to the socket and nothing is
// marshalled per proxy.
type preEncoded struct{ data mem.BufferSlice }

// codec is the proto codec with one addition: a *preEncoded message is
// passed through as is. It is forced on meshd's xDS gRPC servers, so the
// other services on them (CSR, access logs) get plain proto encoding.
type codec struct{}

var protoCodec = encoding.GetCodecV2("proto")

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preEncoded); ok {
		return p.data, nil
	}
	return protoCodec.Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error { return protoCodec.Unmarshal(data, v) }

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
