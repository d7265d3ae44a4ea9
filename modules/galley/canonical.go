package galley

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
)

// storedObject is the canonical form of an object: what the store keeps,
// what the admin API returns and what diffs compare. encoding/json sorts
// map keys and the spec is protojson compacted, so equal objects encode to
// equal bytes.
type storedObject struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   storedMeta      `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

type storedMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// canonical encodes o canonically.
func canonical(o *api.Object) ([]byte, error) {
	apiVersion := o.APIVersion
	if apiVersion == "" {
		if v := o.Kind.Versions(); len(v) > 0 {
			apiVersion = o.Kind.Group + "/" + v[0]
		}
	}
	spec := []byte("{}")
	if o.Spec != nil {
		raw, err := protojson.Marshal(o.Spec)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", o.Key(), err)
		}
		// protojson varies its whitespace on purpose; compacting removes it.
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return nil, fmt.Errorf("encode %s: %w", o.Key(), err)
		}
		spec = b.Bytes()
	}
	return json.Marshal(storedObject{
		APIVersion: apiVersion,
		Kind:       o.Kind.Kind,
		Metadata:   storedMeta{Name: o.Name, Namespace: o.Namespace, Labels: o.Labels, Annotations: o.Annotations},
		Spec:       spec,
	})
}

// storeDecoder decodes canonical bytes back into objects.
var storeDecoder = decode.New(decode.Options{})

// fromCanonical decodes a stored object and gives it the source e records.
// Stored objects have no line index: findings about them point at the
// start of their document until their file is read again.
func fromCanonical(data []byte, e Entry) (*api.Object, error) {
	r := storeDecoder.Decode("stored.json", data)
	if len(r.Objects) != 1 || api.HasErrors(r.Findings) {
		msg := "no object"
		if len(r.Findings) > 0 {
			msg = r.Findings[0].Message
		}
		return nil, fmt.Errorf("decode stored object (blob %s): %s", e.Blob, msg)
	}
	o := r.Objects[0]
	o.Source = api.Source{File: e.File, Line: e.Line}
	o.Lines = nil
	return o, nil
}

// digest identifies an origin's content as galley saw it. The zero digest
// means "absent".
type digest [sha256.Size]byte

func (d digest) String() string {
	if d == (digest{}) {
		return ""
	}
	return hex.EncodeToString(d[:8])
}

// MarshalText encodes the digest as hex; the zero digest as "".
func (d digest) MarshalText() ([]byte, error) {
	if d == (digest{}) {
		return nil, nil
	}
	return []byte(hex.EncodeToString(d[:])), nil
}

// UnmarshalText decodes MarshalText.
func (d *digest) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*d = digest{}
		return nil
	}
	if hex.DecodedLen(len(b)) != len(d) {
		return errors.New("digest: bad length")
	}
	_, err := hex.Decode(d[:], b)
	return err
}

// preparedObject is an object of an update with its canonical bytes.
type preparedObject struct {
	obj  *api.Object
	data []byte
	blob blobHash
}

// prepared is an update ready for the engine: canonical bytes computed and
// the content digested.
type prepared struct {
	api.Update
	source  string
	objects []preparedObject
	digest  digest
}

// prepare encodes u's objects and digests the update. An object that
// cannot be encoded (which decoded objects never are) becomes a finding
// that rejects the update.
func prepare(u api.Update, source string) *prepared {
	p := &prepared{Update: u, source: source}
	p.Findings = slices.Clone(u.Findings)
	if u.Removed {
		p.Objects, p.Rejected, p.Findings = nil, nil, nil
		return p
	}
	h := sha256.New()
	for _, o := range u.Objects {
		data, err := canonical(o)
		if err != nil {
			p.Findings = append(p.Findings, api.Finding{
				Code: api.CodeBadValue, Severity: api.SeverityError, Object: o.Key(),
				File: o.Source.File, Line: o.Source.Line, Message: err.Error(),
			})
			continue
		}
		p.objects = append(p.objects, preparedObject{obj: o, data: data, blob: sha256.Sum256(data)})
	}
	objs := slices.Clone(p.objects)
	slices.SortFunc(objs, func(a, b preparedObject) int { return bytes.Compare(a.data, b.data) })
	for _, po := range objs {
		h.Write([]byte("O"))
		h.Write(po.blob[:])
	}
	for _, o := range u.Rejected {
		h.Write([]byte("R" + string(o.Key()) + "\x00" + strconv.FormatUint(o.Hash, 16)))
	}
	for _, f := range p.Findings {
		h.Write([]byte("F" + f.String() + "\x00"))
	}
	h.Write([]byte("E")) // an empty origin differs from an absent one
	h.Sum(p.digest[:0])
	return p
}
