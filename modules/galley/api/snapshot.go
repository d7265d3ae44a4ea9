package api

import (
	"cmp"
	"iter"
	"slices"
)

// Snapshot is an accepted config set at one revision: what pilot builds
// proxy config from. It is immutable once built; the objects it holds are
// shared with other snapshots and must not be modified.
type Snapshot struct {
	revision uint64
	byKind   map[Kind][]*Object
	byKey    map[Key]*Object
	len      int
}

// NewSnapshot builds a snapshot of objs at revision. Objects are ordered by
// namespace and name within each kind. When two objects share a key the
// first one wins; analysis reports such duplicates (GAL3001) before a set is
// accepted, so this only matters for callers that skip it.
func NewSnapshot(revision uint64, objs []*Object) *Snapshot {
	s := &Snapshot{
		revision: revision,
		byKind:   make(map[Kind][]*Object),
		byKey:    make(map[Key]*Object, len(objs)),
	}
	for _, o := range objs {
		if o == nil {
			continue
		}
		k := o.Key()
		if _, dup := s.byKey[k]; dup {
			continue
		}
		s.byKey[k] = o
		s.byKind[o.Kind] = append(s.byKind[o.Kind], o)
		s.len++
	}
	for _, list := range s.byKind {
		slices.SortFunc(list, func(a, b *Object) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
	}
	return s
}

// Revision returns the revision number the snapshot was built with.
func (s *Snapshot) Revision() uint64 {
	if s == nil {
		return 0
	}
	return s.revision
}

// Len returns the number of objects.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return s.len
}

// List returns the objects of kind k ordered by namespace and name. The
// slice is a copy; the objects are shared.
func (s *Snapshot) List(k Kind) []*Object {
	if s == nil {
		return nil
	}
	return slices.Clone(s.byKind[k])
}

// All iterates over the objects of kind k in List order without copying.
func (s *Snapshot) All(k Kind) iter.Seq[*Object] {
	return func(yield func(*Object) bool) {
		if s == nil {
			return
		}
		for _, o := range s.byKind[k] {
			if !yield(o) {
				return
			}
		}
	}
}

// Get returns the object with key k.
func (s *Snapshot) Get(k Key) (*Object, bool) {
	if s == nil {
		return nil, false
	}
	o, ok := s.byKey[k]
	return o, ok
}

// Objects returns every object, kinds in Kinds order, each kind in List
// order.
func (s *Snapshot) Objects() []*Object {
	if s == nil {
		return nil
	}
	out := make([]*Object, 0, s.len)
	for _, k := range supportedKinds {
		out = append(out, s.byKind[k]...)
	}
	return out
}
