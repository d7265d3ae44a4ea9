package api

import (
	"strings"

	"google.golang.org/protobuf/proto"
)

// DefaultNamespace is the namespace of objects that do not name one, as in
// Istio and Kubernetes.
const DefaultNamespace = "default"

// Source is where an object was read from. Line is the line of the first key
// of its YAML document (1-based), so an editor jumps to the object itself
// rather than to a preceding comment or "---".
type Source struct {
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
}

// Object is one decoded config object. Spec is the istio.io/api message for
// Kind (for example *v1alpha3.VirtualService); it is shared, not copied, so
// holders of an Object must treat it as read-only.
type Object struct {
	Kind Kind
	// APIVersion is the apiVersion as written, e.g. "networking.istio.io/v1beta1".
	APIVersion  string
	Namespace   string
	Name        string
	Labels      map[string]string
	Annotations map[string]string
	Spec        proto.Message
	Source      Source
	// Lines maps field paths of the source document to line numbers. It is
	// nil for objects that were not decoded from text.
	Lines *Lines
	// Hash is a digest of the object's content (metadata that matters and
	// spec), independent of formatting and comments. Equal hashes mean "no
	// change" for change detection; zero means not computed.
	Hash uint64
}

// Key identifies an object in a config set: kind/namespace/name, for example
// "VirtualService/bookstore/reviews". Kind names are unique among the
// supported kinds, so the group is left out to keep keys readable.
type Key string

// MakeKey builds the key of an object of kind k.
func MakeKey(k Kind, namespace, name string) Key {
	return Key(k.Kind + "/" + namespace + "/" + name)
}

// Key returns the object's key.
func (o *Object) Key() Key {
	return MakeKey(o.Kind, o.Namespace, o.Name)
}

// Parts splits a key into kind name, namespace and name. ok is false when the
// key does not have three parts.
func (k Key) Parts() (kind, namespace, name string, ok bool) {
	s := string(k)
	i := strings.IndexByte(s, '/')
	if i < 0 {
		return "", "", "", false
	}
	j := strings.IndexByte(s[i+1:], '/')
	if j < 0 {
		return "", "", "", false
	}
	return s[:i], s[i+1 : i+1+j], s[i+2+j:], true
}

// Line returns the line of a field path in the object's source, falling back
// to the nearest enclosing field that exists and then to the document start.
// It is what findings use to point at the exact line.
func (o *Object) Line(path string) int {
	if o.Lines != nil {
		if l := o.Lines.Nearest(path); l > 0 {
			return l
		}
	}
	return o.Source.Line
}
