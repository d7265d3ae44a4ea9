package decode

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/modules/galley/api"
)

// NewSpec returns an empty spec message for kind k, or nil if k is not
// supported. All API versions of a kind share one Go type.
func NewSpec(k api.Kind) proto.Message {
	switch k {
	case api.KindVirtualService:
		return &networking.VirtualService{}
	case api.KindDestinationRule:
		return &networking.DestinationRule{}
	case api.KindGateway:
		return &networking.Gateway{}
	case api.KindServiceEntry:
		return &networking.ServiceEntry{}
	case api.KindWorkloadEntry:
		return &networking.WorkloadEntry{}
	case api.KindWorkloadGroup:
		return &networking.WorkloadGroup{}
	case api.KindSidecar:
		return &networking.Sidecar{}
	case api.KindPeerAuthentication:
		return &security.PeerAuthentication{}
	case api.KindAuthorizationPolicy:
		return &security.AuthorizationPolicy{}
	case api.KindRequestAuthentication:
		return &security.RequestAuthentication{}
	}
	return nil
}

// docDecoder decodes one YAML document. It lives for one document only.
type docDecoder struct {
	d        *Decoder
	file     string
	offset   int // added to node lines: the document's first line minus one
	budget   int // nodes left before the document counts as too complex
	lines    *api.Lines
	key      api.Key
	findings []api.Finding
	failed   bool    // an error finding was reported
	scratch  *[]byte // shared encoding buffer for hashing
}

func (dd *docDecoder) line(n *yaml.Node) int {
	return n.Line + dd.offset
}

// report records a finding about the current document.
func (dd *docDecoder) report(code api.Code, sev api.Severity, line int, field, format string, args ...any) {
	if sev == api.SeverityError {
		dd.failed = true
	}
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	dd.findings = append(dd.findings, api.Finding{
		Code:     code,
		Severity: sev,
		Object:   dd.key,
		File:     dd.file,
		Line:     line,
		Field:    field,
		Message:  msg,
	})
}

func (dd *docDecoder) errorf(code api.Code, n *yaml.Node, field, format string, args ...any) {
	dd.report(code, api.SeverityError, dd.line(n), field, format, args...)
}

// deref follows aliases and charges the node budget. It returns nil once the
// budget is exhausted, after reporting it once.
func (dd *docDecoder) deref(n *yaml.Node) *yaml.Node {
	for depth := 0; n != nil && n.Kind == yaml.AliasNode; depth++ {
		if depth > 100 {
			n = nil
			break
		}
		n = n.Alias
	}
	if n == nil {
		return nil
	}
	dd.budget--
	if dd.budget == 0 {
		dd.errorf(api.CodeTooComplex, n, "", "document is too large or expands too many aliases (more than %d nodes); split it up", dd.d.opts.MaxNodes)
	}
	if dd.budget <= 0 {
		return nil
	}
	return n
}

// isNull reports whether n is an explicit or implicit YAML null.
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// metadataIgnored lists Kubernetes ObjectMeta fields that are accepted in
// files (they appear in "kubectl get -o yaml" output) but mean nothing here.
var metadataIgnored = map[string]bool{
	"generateName": true, "uid": true, "resourceVersion": true, "generation": true,
	"creationTimestamp": true, "deletionTimestamp": true, "deletionGracePeriodSeconds": true,
	"ownerReferences": true, "finalizers": true, "managedFields": true, "selfLink": true,
}

// decodeRoot decodes a document's root node: an object, or a Kubernetes List
// of objects.
func (dd *docDecoder) decodeRoot(r *Result, root *yaml.Node) {
	dd.decodeObject(r, root)
}

func (dd *docDecoder) decodeObject(r *Result, root *yaml.Node) {
	root = dd.deref(root)
	if root == nil || isNull(root) {
		dd.flush(r, nil)
		return
	}
	if root.Kind != yaml.MappingNode {
		dd.errorf(api.CodeNotAnObject, root, "", "document is a %s, not an object; expected a mapping with apiVersion, kind, metadata and spec", nodeKindName(root))
		dd.flush(r, nil)
		return
	}

	var apiVersionN, kindN, metadataN, specN, itemsN *yaml.Node
	var metadataK, specK *yaml.Node
	type extra struct{ k, v *yaml.Node }
	var extras []extra
	seen := make(map[string]bool, 6)
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := dd.deref(root.Content[i]), root.Content[i+1]
		if kn == nil {
			dd.flush(r, nil)
			return
		}
		if kn.Kind != yaml.ScalarNode {
			dd.errorf(api.CodeNotAnObject, kn, "", "top-level keys must be plain strings")
			continue
		}
		if seen[kn.Value] {
			dd.errorf(api.CodeDuplicateField, kn, kn.Value, "field %q is given more than once; YAML keeps only one, remove the other", kn.Value)
			continue
		}
		seen[kn.Value] = true
		switch kn.Value {
		case "apiVersion":
			apiVersionN = vn
		case "kind":
			kindN = vn
		case "metadata":
			metadataK, metadataN = kn, vn
		case "spec":
			specK, specN = kn, vn
		case "items":
			itemsN = vn
		default:
			extras = append(extras, extra{kn, vn})
		}
	}

	apiVersion, okV := dd.plainString(apiVersionN)
	kindName, okK := dd.plainString(kindN)
	if !okV || !okK || apiVersion == "" || kindName == "" {
		var missing []string
		if !okV || apiVersion == "" {
			missing = append(missing, "apiVersion")
		}
		if !okK || kindName == "" {
			missing = append(missing, "kind")
		}
		dd.errorf(api.CodeNotAnObject, root, "", "document has no %s; every object needs apiVersion, kind and metadata.name", strings.Join(missing, " or "))
		dd.flush(r, nil)
		return
	}

	group, version := api.SplitAPIVersion(apiVersion)
	if group == "" && kindName == "List" {
		dd.decodeItems(r, itemsN)
		return
	}
	kind := api.Kind{Group: group, Kind: kindName}
	if !kind.Supported() {
		if !dd.unsupportedKind(kindN, group, version, kindName) {
			dd.flush(r, nil)
			return
		}
		// apiVersion without its group but a known kind: carry on with the
		// right group so the rest of the object is still checked.
		kind, _ = api.KindByName(kindName)
	} else if !kind.AcceptsVersion(version) {
		dd.errorf(api.CodeBadAPIVersion, apiVersionN, "apiVersion", "%s is not served for %s; use %s/%s", apiVersion, kindName, group, strings.Join(kind.Versions(), ", "+group+"/"))
	}

	dd.lines = api.NewLines(32)
	dd.lines.AddField(-1, "apiVersion", dd.line(apiVersionN))
	dd.lines.AddField(-1, "kind", dd.line(kindN))

	obj := &api.Object{
		Kind:       kind,
		APIVersion: apiVersion,
		Namespace:  dd.d.opts.DefaultNamespace,
		Source:     api.Source{File: dd.file, Line: dd.line(root)},
		Lines:      dd.lines,
	}
	dd.decodeMetadata(obj, metadataK, metadataN, root)
	dd.key = obj.Key()
	// Findings reported before the name was known get the key too.
	for i := range dd.findings {
		dd.findings[i].Object = dd.key
	}

	for _, e := range extras {
		switch e.k.Value {
		case "status":
			// Written by controllers; present in exported YAML, ignored here.
			dd.lines.AddField(-1, "status", dd.line(e.k))
		default:
			dd.errorf(api.CodeUnknownField, e.k, e.k.Value, "unknown top-level field %q%s; objects have apiVersion, kind, metadata and spec", e.k.Value, suggest(e.k.Value, []string{"apiVersion", "kind", "metadata", "spec", "status"}))
		}
	}
	if itemsN != nil {
		dd.errorf(api.CodeUnknownField, itemsN, "items", "unknown top-level field \"items\"; only kind List has items")
	}

	obj.Spec = NewSpec(kind)
	if specN != nil {
		h := dd.lines.AddField(-1, "spec", dd.line(specK))
		dd.decodeMessage(specN, obj.Spec.ProtoReflect(), h)
	}
	obj.Hash = hashObject(obj, dd.scratch)
	dd.flush(r, obj)
}

// flush moves the document's findings and object into r.
func (dd *docDecoder) flush(r *Result, obj *api.Object) {
	r.Findings = append(r.Findings, dd.findings...)
	dd.findings = dd.findings[:0]
	if obj == nil {
		return
	}
	if dd.failed {
		r.Rejected = append(r.Rejected, obj)
	} else {
		r.Objects = append(r.Objects, obj)
	}
}

// unsupportedKind reports a kind galley does not decode. It returns true
// when the kind is a supported one written with an apiVersion lacking its
// group, so decoding can go on.
func (dd *docDecoder) unsupportedKind(kindN *yaml.Node, group, version, kindName string) bool {
	if k, ok := api.KindByName(kindName); ok && group == "" {
		dd.errorf(api.CodeBadAPIVersion, kindN, "apiVersion", "apiVersion %q lacks the API group; write %s/%s", version, k.Group, k.Versions()[0])
		return true
	}
	if k, ok := api.KindByName(kindName); ok {
		dd.errorf(api.CodeBadAPIVersion, kindN, "apiVersion", "%s belongs to API group %s, not %s", kindName, k.Group, group)
		return false
	}
	if strings.HasSuffix(group, "istio.io") || group == "" && kindName != "" && suggest(kindName, kindNames()) != "" {
		if s := suggest(kindName, kindNames()); s != "" {
			dd.errorf(api.CodeUnknownKind, kindN, "kind", "%s is not a kind meshd supports in %s%s", kindName, withGroup(group, version), s)
		} else {
			dd.errorf(api.CodeUnknownKind, kindN, "kind", "%s is not a kind meshd supports in %s; supported kinds: %s", kindName, withGroup(group, version), strings.Join(kindNames(), ", "))
		}
		return false
	}
	dd.report(api.CodeIgnoredKind, api.SeverityWarning, dd.line(kindN), "kind", "%s %s is not an Istio config kind; meshd ignores it", withGroup(group, version), kindName)
	return false
}

func withGroup(group, version string) string {
	if group == "" {
		return version
	}
	return group + "/" + version
}

func kindNames() []string {
	ks := api.Kinds()
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Kind
	}
	return out
}

// decodeList decodes the items of a Kubernetes "kind: List" document, each
// as an object of its own with its own start line.
func (dd *docDecoder) decodeItems(r *Result, itemsN *yaml.Node) {
	itemsN = dd.deref(itemsN)
	if itemsN == nil || isNull(itemsN) {
		dd.flush(r, nil)
		return
	}
	if itemsN.Kind != yaml.SequenceNode {
		dd.errorf(api.CodeBadValue, itemsN, "items", "items of a List must be a list of objects")
		dd.flush(r, nil)
		return
	}
	dd.flush(r, nil)
	for _, it := range itemsN.Content {
		sub := docDecoder{d: dd.d, file: dd.file, offset: dd.offset, budget: dd.budget, scratch: dd.scratch}
		sub.decodeObject(r, it)
		dd.budget = sub.budget
	}
}

// plainString returns a scalar's string value; ok is false for non-scalars.
func (dd *docDecoder) plainString(n *yaml.Node) (string, bool) {
	n = dd.deref(n)
	if n == nil || n.Kind != yaml.ScalarNode || isNull(n) {
		return "", false
	}
	return n.Value, true
}

// decodeMetadata fills name, namespace, labels and annotations.
func (dd *docDecoder) decodeMetadata(obj *api.Object, k, n, root *yaml.Node) {
	n = dd.deref(n)
	if n == nil || isNull(n) {
		dd.errorf(api.CodeMissingName, root, "metadata.name", "object has no metadata.name; add metadata: {name: ...}")
		return
	}
	mh := dd.lines.AddField(-1, "metadata", dd.line(k))
	if n.Kind != yaml.MappingNode {
		dd.errorf(api.CodeBadValue, n, "metadata", "metadata must be a mapping, got a %s", nodeKindName(n))
		return
	}
	seen := make(map[string]bool, 4)
	hasName := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := dd.deref(n.Content[i]), n.Content[i+1]
		if kn == nil {
			return
		}
		if kn.Kind != yaml.ScalarNode {
			dd.errorf(api.CodeBadValue, kn, "metadata", "metadata keys must be plain strings")
			continue
		}
		field := "metadata." + kn.Value
		if seen[kn.Value] {
			dd.errorf(api.CodeDuplicateField, kn, field, "field %q is given more than once; remove one", kn.Value)
			continue
		}
		seen[kn.Value] = true
		switch kn.Value {
		case "name", "namespace":
			h := dd.lines.AddField(mh, kn.Value, dd.line(kn))
			s, ok := dd.stringValue(vn, h)
			if !ok {
				continue
			}
			if kn.Value == "name" {
				obj.Name, hasName = s, s != ""
			} else if s != "" {
				obj.Namespace = s
			}
		case "labels", "annotations":
			h := dd.lines.AddField(mh, kn.Value, dd.line(kn))
			m := dd.stringMap(vn, h)
			if kn.Value == "labels" {
				obj.Labels = m
			} else {
				obj.Annotations = m
			}
		default:
			if metadataIgnored[kn.Value] {
				continue
			}
			dd.errorf(api.CodeUnknownField, kn, field, "unknown field %q in metadata%s", kn.Value, suggest(kn.Value, []string{"name", "namespace", "labels", "annotations"}))
		}
	}
	if !hasName {
		dd.errorf(api.CodeMissingName, k, "metadata.name", "object has no metadata.name")
	}
}

// stringValue decodes a scalar that must be a string.
func (dd *docDecoder) stringValue(n *yaml.Node, h int32) (string, bool) {
	n = dd.deref(n)
	if n == nil {
		return "", false
	}
	if isNull(n) {
		return "", true
	}
	if n.Kind != yaml.ScalarNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a string, got a %s", nodeKindName(n))
		return "", false
	}
	if t := n.ShortTag(); t != "!!str" && t != "!!timestamp" {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a string, got %s %s; quote it", tagName(t), n.Value)
		return "", false
	}
	return n.Value, true
}

// stringMap decodes a map of strings such as labels.
func (dd *docDecoder) stringMap(n *yaml.Node, h int32) map[string]string {
	n = dd.deref(n)
	if n == nil || isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a mapping of strings, got a %s", nodeKindName(n))
		return nil
	}
	m := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn := dd.deref(n.Content[i])
		if kn == nil {
			return m
		}
		if kn.Kind != yaml.ScalarNode {
			dd.errorf(api.CodeBadValue, kn, dd.lines.Path(h), "keys must be strings")
			continue
		}
		kh := dd.lines.AddMapKey(h, kn.Value, dd.line(kn))
		if _, dup := m[kn.Value]; dup {
			dd.errorf(api.CodeDuplicateField, kn, dd.lines.Path(kh), "key %q is given more than once", kn.Value)
			continue
		}
		v, ok := dd.stringValue(n.Content[i+1], kh)
		if ok {
			m[kn.Value] = v
		}
	}
	return m
}

func nodeKindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return tagName(n.ShortTag()) + " " + quoteShort(n.Value)
	}
	return "document"
}

func tagName(t string) string {
	switch t {
	case "!!str":
		return "string"
	case "!!int":
		return "number"
	case "!!float":
		return "number"
	case "!!bool":
		return "boolean"
	case "!!null":
		return "null"
	case "!!timestamp":
		return "timestamp"
	case "!!binary":
		return "binary"
	}
	return strings.TrimPrefix(t, "!!")
}

func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return fmt.Sprintf("%q", s)
}
