package api

import (
	"strconv"
	"strings"
)

// Lines maps field paths of one decoded document to their line numbers.
//
// Paths use the JSON (camelCase) field names, dots between fields, [i] for
// list items and [key] for map entries: "spec.http[0].route[1].weight",
// "metadata.labels[app.kubernetes.io/name]".
//
// It is stored as a flat tree (one small entry per YAML node that maps to a
// field) rather than as a map of path strings: decoding 10,000 objects would
// otherwise build hundreds of thousands of strings that are only read when a
// finding needs a line. Lookups walk the tree, which is cheap next to the
// rarity of findings.
type Lines struct {
	entries []lineEntry
}

// lineEntry kinds.
const (
	entryField uint8 = iota
	entryItem
	entryMapKey
)

type lineEntry struct {
	name   string // field name or map key; empty for list items
	parent int32  // index of the parent entry, -1 for top-level fields
	index  int32  // list index for items
	line   int32
	kind   uint8
}

// NewLines returns an empty index with room for n entries.
func NewLines(n int) *Lines {
	return &Lines{entries: make([]lineEntry, 0, n)}
}

// AddField records that field name of parent starts at line and returns the
// new entry's handle for its children. Use parent -1 for top-level fields.
func (l *Lines) AddField(parent int32, name string, line int) int32 {
	return l.add(lineEntry{name: name, parent: parent, line: int32(line), kind: entryField})
}

// AddItem records list item index of parent at line.
func (l *Lines) AddItem(parent int32, index int, line int) int32 {
	return l.add(lineEntry{parent: parent, index: int32(index), line: int32(line), kind: entryItem})
}

// AddMapKey records the map entry key of parent at line.
func (l *Lines) AddMapKey(parent int32, key string, line int) int32 {
	return l.add(lineEntry{name: key, parent: parent, line: int32(line), kind: entryMapKey})
}

func (l *Lines) add(e lineEntry) int32 {
	l.entries = append(l.entries, e)
	return int32(len(l.entries) - 1)
}

// Len returns the number of recorded paths.
func (l *Lines) Len() int {
	if l == nil {
		return 0
	}
	return len(l.entries)
}

// Line returns the line of exactly path, or false if the document did not
// contain it.
func (l *Lines) Line(path string) (int, bool) {
	idx, complete := l.resolve(path)
	if !complete || idx < 0 {
		return 0, false
	}
	return int(l.entries[idx].line), true
}

// Nearest returns the line of path or, when the document does not contain
// it, of its deepest enclosing path that it does contain; 0 if none. A
// finding about a missing field thus points at the object that lacks it.
func (l *Lines) Nearest(path string) int {
	idx, _ := l.resolve(path)
	if idx < 0 {
		return 0
	}
	return int(l.entries[idx].line)
}

// resolve walks path segment by segment and returns the deepest entry found
// and whether every segment matched.
func (l *Lines) resolve(path string) (int32, bool) {
	if l == nil || path == "" {
		return -1, false
	}
	cur := int32(-1)
	rest := path
	for rest != "" {
		var seg string
		bracket := false
		switch rest[0] {
		case '.':
			rest = rest[1:]
			continue
		case '[':
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return cur, false
			}
			seg, rest, bracket = rest[1:end], rest[end+1:], true
		default:
			end := strings.IndexAny(rest, ".[")
			if end < 0 {
				end = len(rest)
			}
			seg, rest = rest[:end], rest[end:]
		}
		next := l.child(cur, seg, bracket)
		if next < 0 {
			return cur, false
		}
		cur = next
	}
	return cur, true
}

// child finds the child of parent named by seg. Children are always appended
// after their parent, so the scan starts there.
func (l *Lines) child(parent int32, seg string, bracket bool) int32 {
	idx := -1
	if bracket {
		if n, err := strconv.Atoi(seg); err == nil {
			idx = n
		}
	}
	for i := parent + 1; int(i) < len(l.entries); i++ {
		e := &l.entries[i]
		if e.parent != parent {
			continue
		}
		switch {
		case !bracket && e.kind == entryField && e.name == seg:
			return i
		case bracket && e.kind == entryItem && int(e.index) == idx:
			return i
		case bracket && e.kind == entryMapKey && e.name == seg:
			return i
		}
	}
	return -1
}

// Path renders the path of entry h; decoders use it to name the field in a
// finding without building paths for fields that are fine.
func (l *Lines) Path(h int32) string {
	if l == nil || h < 0 || int(h) >= len(l.entries) {
		return ""
	}
	var segs []int32
	for i := h; i >= 0; i = l.entries[i].parent {
		segs = append(segs, i)
	}
	var b strings.Builder
	for j := len(segs) - 1; j >= 0; j-- {
		e := &l.entries[segs[j]]
		switch e.kind {
		case entryField:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(e.name)
		case entryItem:
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(int(e.index)))
			b.WriteByte(']')
		case entryMapKey:
			b.WriteByte('[')
			b.WriteString(e.name)
			b.WriteByte(']')
		}
	}
	return b.String()
}

// Map renders every recorded path with its line. It allocates a string per
// path, so it is meant for tools and tests, not for hot paths.
func (l *Lines) Map() map[string]int {
	if l == nil {
		return nil
	}
	m := make(map[string]int, len(l.entries))
	for i := range l.entries {
		m[l.Path(int32(i))] = int(l.entries[i].line)
	}
	return m
}
