package server

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/api"
)

// An entry is one encoded resource version. Entries are immutable and
// shared: by every proxy that receives the resource, and by successive
// snapshots while the resource does not change. The resource is stored
// once, already in the wire form of a DiscoveryResponse.resources element,
// so sending it is a copy (or not even that, see snapshot.sotwBlob).
type entry struct {
	name    string
	version string // hex content hash, also the delta Resource.version
	hash    uint64
	srcVer  string // api.Resource.Version, to skip re-encoding
	// rec is field 2 of DiscoveryResponse: tag, length, then the Any
	// (type_url, value). Any.value aliases its tail.
	rec    []byte
	anyOff int // rec[anyOff:] is the encoded Any
	any    *anypb.Any
	// refs are names of the dependent type this resource refers to (EDS
	// names of an EDS cluster, RDS names of a listener).
	refs []string

	deltaOnce sync.Once
	deltaRes  *discovery.Resource
}

func (e *entry) valueLen() int { return len(e.any.GetValue()) }

// deltaResource is the entry as a delta Resource, made on first use since
// only delta streams need it.
func (e *entry) deltaResource() *discovery.Resource {
	e.deltaOnce.Do(func() {
		e.deltaRes = &discovery.Resource{Name: e.name, Version: e.version, Resource: e.any}
	})
	return e.deltaRes
}

// appendDeltaRec appends e as field 2 of DeltaDiscoveryResponse: a Resource
// with version (1), resource (2) and name (3).
func (e *entry) appendDeltaRec(b []byte) []byte {
	anyBody := e.rec[e.anyOff:]
	n := protowire.SizeTag(1) + protowire.SizeBytes(len(e.version)) +
		protowire.SizeTag(2) + protowire.SizeBytes(len(anyBody)) +
		protowire.SizeTag(3) + protowire.SizeBytes(len(e.name))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, e.version)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, anyBody)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	return protowire.AppendString(b, e.name)
}

func (e *entry) deltaRecLen() int {
	anyBody := len(e.rec) - e.anyOff
	n := protowire.SizeTag(1) + protowire.SizeBytes(len(e.version)) +
		protowire.SizeTag(2) + protowire.SizeBytes(anyBody) +
		protowire.SizeTag(3) + protowire.SizeBytes(len(e.name))
	return protowire.SizeTag(2) + protowire.SizeBytes(n)
}

var marshalOpts = proto.MarshalOptions{Deterministic: true}

// newEntry encodes one resource.
func newEntry(typeURL string, r api.Resource) (*entry, error) {
	value, err := marshalOpts.Marshal(r.Message)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", r.Name, err)
	}
	return newEntryBytes(typeURL, r.Name, r.Version, value), nil
}

func newEntryBytes(typeURL, name, srcVer string, value []byte) *entry {
	anyLen := protowire.SizeTag(1) + protowire.SizeBytes(len(typeURL)) +
		protowire.SizeTag(2) + protowire.SizeBytes(len(value))
	rec := make([]byte, 0, protowire.SizeTag(2)+protowire.SizeBytes(anyLen))
	rec = protowire.AppendTag(rec, 2, protowire.BytesType)
	rec = protowire.AppendVarint(rec, uint64(anyLen))
	anyOff := len(rec)
	rec = protowire.AppendTag(rec, 1, protowire.BytesType)
	rec = protowire.AppendString(rec, typeURL)
	rec = protowire.AppendTag(rec, 2, protowire.BytesType)
	rec = protowire.AppendBytes(rec, value)
	h := xxhash.Sum64(value)
	return &entry{
		name:    name,
		version: strconv.FormatUint(h, 36),
		hash:    h,
		srcVer:  srcVer,
		rec:     rec,
		anyOff:  anyOff,
		any:     &anypb.Any{TypeUrl: typeURL, Value: rec[len(rec)-len(value):]},
	}
}

// snapshotDepth bounds how many ancestors a snapshot keeps for computing
// what changed since a proxy's last response. A proxy further behind is
// diffed name by name instead.
const snapshotDepth = 4

// A snapshot is the immutable set of one type's resources for one group of
// proxies (one generator key) at one version.
type snapshot struct {
	typeURL string
	version string
	entries map[string]*entry
	sorted  []*entry // by name: the order of every response
	sum     uint64   // order-independent hash of (name, content) pairs
	size    int      // total encoded value bytes

	// parent is the snapshot this one was derived from and changed the
	// names that differ from it (updated, added or removed). The chain is
	// cut after snapshotDepth links so old snapshots can be collected.
	parent  *snapshot
	changed []string

	// trigger is when the push that made this snapshot was first asked for.
	trigger time.Time
	// rev is the latest config revision (api.PushRequest.Revision) this
	// set is current for: set when the set is published, and raised by
	// later pushes that leave it unchanged, so proxies holding it are known
	// to run the newer revision without being sent anything. The only
	// field that changes after publication.
	rev atomic.Uint64
	// newNames says the set of names differs from the parent's.
	newNames bool

	anysOnce  sync.Once
	anys      []*anypb.Any
	sotwOnce  sync.Once
	sotwBlob  []byte
	deltaOnce sync.Once
	deltaBlob []byte
}

func mixName(name string, h uint64) uint64 {
	return xxhash.Sum64String(name) ^ (h * 0x9E3779B97F4A7C15)
}

func emptySnapshot(typeURL string) *snapshot {
	s := &snapshot{typeURL: typeURL, entries: map[string]*entry{}}
	s.version = s.makeVersion()
	return s
}

func (s *snapshot) makeVersion() string {
	return strconv.FormatUint(s.sum, 36) + "-" + strconv.Itoa(len(s.sorted))
}

// allAnys returns the resources in order as Anys, shared by every response
// that carries the whole set.
func (s *snapshot) allAnys() []*anypb.Any {
	s.anysOnce.Do(func() {
		s.anys = make([]*anypb.Any, len(s.sorted))
		for i, e := range s.sorted {
			s.anys[i] = e.any
		}
	})
	return s.anys
}

// sotwResources returns the encoded resources field of a state-of-the-world
// response carrying the whole set. It is built once per snapshot and sent
// as is to every proxy that receives the whole set: the codec hands gRPC
// this slice without copying it.
func (s *snapshot) sotwResources() []byte {
	s.sotwOnce.Do(func() {
		n := 0
		for _, e := range s.sorted {
			n += len(e.rec)
		}
		b := make([]byte, 0, n)
		for _, e := range s.sorted {
			b = append(b, e.rec...)
		}
		s.sotwBlob = b
	})
	return s.sotwBlob
}

// deltaResources is sotwResources for delta responses.
func (s *snapshot) deltaResources() []byte {
	s.deltaOnce.Do(func() {
		n := 0
		for _, e := range s.sorted {
			n += e.deltaRecLen()
		}
		b := make([]byte, 0, n)
		for _, e := range s.sorted {
			b = e.appendDeltaRec(b)
		}
		s.deltaBlob = b
	})
	return s.deltaBlob
}

// changesSince returns the names that may differ between old and s, from
// the change lists of the chain between them, and false when old is not a
// recent ancestor of s (then the caller compares name by name).
func (s *snapshot) changesSince(old *snapshot) ([]string, bool) {
	if old == s {
		return nil, true
	}
	var lists [][]string
	total := 0
	for cur := s; cur != nil && len(lists) < snapshotDepth; cur = cur.parent {
		lists = append(lists, cur.changed)
		total += len(cur.changed)
		if cur.parent == old {
			if len(lists) == 1 {
				return lists[0], true
			}
			out := make([]string, 0, total)
			for _, l := range lists {
				out = append(out, l...)
			}
			slices.Sort(out)
			return slices.Compact(out), true
		}
	}
	return nil, false
}

// cutChain keeps at most snapshotDepth ancestors reachable from s.
func (s *snapshot) cutChain() {
	cur := s
	for range snapshotDepth {
		if cur.parent == nil {
			return
		}
		cur = cur.parent
	}
	cur.parent, cur.changed = nil, nil
}

// buildError is a generator output the server refuses.
type buildError struct{ msg string }

func (e *buildError) Error() string { return e.msg }

// build makes the snapshot that follows old (nil for none) from a
// generator's output. With names nil, res is the whole set; otherwise res
// holds the new versions of names and a name missing from res is removed.
// Unchanged resources keep their entries, so their bytes stay shared. It
// returns old itself when nothing changed.
func build(typeURL string, old *snapshot, res []api.Resource, names []string, refsOf func(proto.Message) []string) (*snapshot, error) {
	if old == nil {
		old = emptySnapshot(typeURL)
	}
	fresh := make(map[string]*entry, len(res))
	for _, r := range res {
		if r.Name == "" {
			return nil, &buildError{fmt.Sprintf("%s resource with no name", api.ShortType(typeURL))}
		}
		if strings.ContainsAny(r.Name, "\x00") {
			return nil, &buildError{fmt.Sprintf("%s resource name %q contains NUL", api.ShortType(typeURL), r.Name)}
		}
		if _, dup := fresh[r.Name]; dup {
			return nil, &buildError{fmt.Sprintf("%s resource %q generated twice", api.ShortType(typeURL), r.Name)}
		}
		if r.Message == nil {
			return nil, &buildError{fmt.Sprintf("%s resource %q has no message", api.ShortType(typeURL), r.Name)}
		}
		prev := old.entries[r.Name]
		if prev != nil && r.Version != "" && prev.srcVer == r.Version {
			fresh[r.Name] = prev
			continue
		}
		e, err := newEntry(typeURL, r)
		if err != nil {
			return nil, err
		}
		if prev != nil && prev.hash == e.hash && len(prev.rec) == len(e.rec) {
			if prev.srcVer == r.Version {
				e = prev
			} else {
				// Same bytes under a new source version: keep the shared
				// bytes, remember the new version for next time.
				e = &entry{name: prev.name, version: prev.version, hash: prev.hash, srcVer: r.Version,
					rec: prev.rec, anyOff: prev.anyOff, any: prev.any, refs: prev.refs}
			}
		} else if refsOf != nil {
			e.refs = refsOf(r.Message)
		}
		fresh[r.Name] = e
	}

	var changed []string
	var entries map[string]*entry
	if names == nil {
		entries = fresh
		for name, e := range fresh {
			if old.entries[name] != e {
				changed = append(changed, name)
			}
		}
		for name := range old.entries {
			if _, ok := fresh[name]; !ok {
				changed = append(changed, name)
			}
		}
	} else {
		for name := range fresh {
			if !slices.Contains(names, name) {
				return nil, &buildError{fmt.Sprintf("%s resource %q was not asked for (incremental push of %d names)", api.ShortType(typeURL), name, len(names))}
			}
		}
		for _, name := range names {
			e, now := fresh[name]
			was, before := old.entries[name]
			if now != before || (now && e != was) {
				changed = append(changed, name)
			}
		}
		if len(changed) > 0 {
			entries = maps.Clone(old.entries)
			for _, name := range changed {
				if e, ok := fresh[name]; ok {
					entries[name] = e
				} else {
					delete(entries, name)
				}
			}
		}
	}
	if len(changed) == 0 {
		return old, nil
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)

	s := &snapshot{typeURL: typeURL, entries: entries, parent: old, changed: changed}
	// sorted: patch the parent's order in place of a full sort when only
	// existing names changed, which is the endpoint-update case.
	sameNames := len(entries) == len(old.entries)
	if sameNames {
		for _, name := range changed {
			if _, ok := old.entries[name]; !ok {
				sameNames = false
				break
			}
		}
	}
	s.newNames = !sameNames
	if sameNames {
		s.sorted = slices.Clone(old.sorted)
		for _, name := range changed {
			i, _ := slices.BinarySearchFunc(s.sorted, name, func(e *entry, n string) int { return strings.Compare(e.name, n) })
			s.sorted[i] = entries[name]
		}
	} else {
		s.sorted = make([]*entry, 0, len(entries))
		for _, e := range entries {
			s.sorted = append(s.sorted, e)
		}
		slices.SortFunc(s.sorted, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	}
	s.sum, s.size = old.sum, old.size
	for _, name := range changed {
		if e := old.entries[name]; e != nil {
			s.sum -= mixName(name, e.hash)
			s.size -= e.valueLen()
		}
		if e := entries[name]; e != nil {
			s.sum += mixName(name, e.hash)
			s.size += e.valueLen()
		}
	}
	s.version = s.makeVersion()
	return s, nil
}
