package server

import (
	"strconv"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// subSet is one distinct set of resource names that state-of-the-world
// streams subscribe to, shared by every stream that subscribes to exactly
// that set.
//
// Why: a state-of-the-world request repeats the stream's whole name list
// (an Envoy's EDS request names every cluster), and go-control-plane keeps
// each stream's subscription as a map of those names, rebuilt on every
// request. With a thousand clusters that is some 50 kB per proxy and a map
// build per ACK. Proxies of a mesh mostly subscribe to the same names, so
// the stream wrapper swaps the list for one token naming a shared set;
// go-control-plane then holds a one-entry map, and the cache reads the set.
// Tokens start with NUL, which no resource name may contain.
type subSet struct {
	token []string // the one-name list that stands for the set
	hash  uint64
	names map[string]struct{}
	refs  int // streams holding it (subSets.mu)
}

const subTokenPrefix = "\x00meshd/subscription/"

// subSets interns subscription sets.
type subSets struct {
	mu     sync.Mutex
	byHash map[uint64][]*subSet
	byKey  map[string]*subSet
	seq    uint64
}

func newSubSets() *subSets {
	return &subSets{byHash: map[uint64][]*subSet{}, byKey: map[string]*subSet{}}
}

// namesHash is order-independent (a sum, so a repeated name counts twice).
func namesHash(names []string) uint64 {
	h := uint64(len(names))
	for _, n := range names {
		h += xxhash.Sum64String(n) * 0x9E3779B97F4A7C15
	}
	return h
}

// acquire returns the shared set equal to names, creating it, and counts a
// reference to it. intern canonicalizes the names of a new set.
func (s *subSets) acquire(names []string, intern func([]string)) *subSet {
	h := namesHash(names)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, set := range s.byHash[h] {
		if len(set.names) != len(names) {
			continue
		}
		same := true
		for _, n := range names {
			if _, ok := set.names[n]; !ok {
				same = false
				break
			}
		}
		if same {
			set.refs++
			return set
		}
	}
	intern(names)
	s.seq++
	key := subTokenPrefix + strconv.FormatUint(s.seq, 10)
	set := &subSet{token: []string{key}, hash: h, names: make(map[string]struct{}, len(names)), refs: 1}
	for _, n := range names {
		set.names[n] = struct{}{}
	}
	s.byHash[h] = append(s.byHash[h], set)
	s.byKey[key] = set
	return set
}

// release drops a reference; a set nobody holds is forgotten.
func (s *subSets) release(set *subSet) {
	if set == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	set.refs--
	if set.refs > 0 {
		return
	}
	list := s.byHash[set.hash]
	for i, o := range list {
		if o == set {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.byHash, set.hash)
	} else {
		s.byHash[set.hash] = list
	}
	delete(s.byKey, set.token[0])
}

// lookup resolves a subscription that is one token to its set.
func (s *subSets) lookup(names map[string]struct{}) (*subSet, bool) {
	if len(names) != 1 {
		return nil, false
	}
	for n := range names {
		if len(n) < len(subTokenPrefix) || n[:len(subTokenPrefix)] != subTokenPrefix {
			return nil, false
		}
		s.mu.Lock()
		set := s.byKey[n]
		s.mu.Unlock()
		return set, set != nil
	}
	return nil, false
}

// heldSets is what one stream holds: per type, the sets of its last two
// requests. go-control-plane hands requests from its receive goroutine to
// its stream goroutine over an unbuffered channel, so by the time a third
// request is read, the first has been processed and its set may go.
type heldSets map[string]*[2]*subSet

func (h heldSets) hold(s *subSets, typeURL string, set *subSet) {
	p := h[typeURL]
	if p == nil {
		p = &[2]*subSet{}
		h[typeURL] = p
	}
	if p[0] == set {
		s.release(set) // already held
		return
	}
	s.release(p[1])
	p[1], p[0] = p[0], set
}

func (h heldSets) releaseAll(s *subSets) {
	for _, p := range h {
		s.release(p[0])
		s.release(p[1])
	}
}
