package decode

import (
	"encoding/base64"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshd/meshd/modules/galley/api"
)

// decodeMessage fills m from mapping node n. h is the line-index handle of
// the field that holds m; fields of m are recorded under it.
func (dd *docDecoder) decodeMessage(n *yaml.Node, m protoreflect.Message, h int32) {
	n = dd.deref(n)
	if n == nil || isNull(n) {
		return
	}
	if wkt := m.Descriptor().FullName(); strings.HasPrefix(string(wkt), "google.protobuf.") {
		dd.decodeWellKnown(n, m, h)
		return
	}
	if n.Kind != yaml.MappingNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a mapping of %s fields, got a %s", m.Descriptor().Name(), nodeKindName(n))
		return
	}
	fields := m.Descriptor().Fields()
	// seen tracks fields already given, by field index; messages with more
	// than 64 fields fall back to a map.
	var seen uint64
	var seenBig map[int]bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := dd.deref(n.Content[i]), n.Content[i+1]
		if kn == nil {
			return
		}
		if kn.Kind != yaml.ScalarNode {
			dd.errorf(api.CodeBadValue, kn, dd.lines.Path(h), "field names must be plain strings, got a %s", nodeKindName(kn))
			continue
		}
		name := kn.Value
		fd := fields.ByJSONName(name)
		if fd == nil {
			fd = fields.ByTextName(name)
		}
		if fd == nil {
			dd.unknownField(kn, h, m.Descriptor(), name)
			continue
		}
		idx := fd.Index()
		dup := false
		if idx < 64 {
			dup = seen&(1<<idx) != 0
			seen |= 1 << idx
		} else {
			if seenBig == nil {
				seenBig = make(map[int]bool)
			}
			dup = seenBig[idx]
			seenBig[idx] = true
		}
		fh := dd.lines.AddField(h, fd.JSONName(), dd.line(kn))
		if dup {
			dd.errorf(api.CodeDuplicateField, kn, dd.lines.Path(fh), "field %q is given more than once; remove one", fd.JSONName())
			continue
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if other := m.WhichOneof(od); other != nil && other != fd {
				dd.errorf(api.CodeOneofConflict, kn, dd.lines.Path(fh), "only one of %s may be set, and %q is already set", oneofNames(od), other.JSONName())
				continue
			}
		}
		switch {
		case fd.IsList():
			dd.decodeList(vn, m, fd, fh)
		case fd.IsMap():
			dd.decodeMap(vn, m, fd, fh)
		case fd.Message() != nil:
			v := dd.deref(vn)
			if v == nil || (isNull(v) && fd.Message().FullName() != "google.protobuf.Value") {
				continue
			}
			dd.decodeMessage(v, m.Mutable(fd).Message(), fh)
		default:
			v := dd.deref(vn)
			if v == nil || isNull(v) {
				continue
			}
			if val, ok := dd.scalar(v, fd, fh); ok {
				m.Set(fd, val)
			}
		}
	}
}

func oneofNames(od protoreflect.OneofDescriptor) string {
	fs := od.Fields()
	names := make([]string, fs.Len())
	for i := range names {
		names[i] = strconv.Quote(fs.Get(i).JSONName())
	}
	return strings.Join(names, ", ")
}

// unknownField reports name as unknown in message md, suggesting the closest
// known field or listing them all.
func (dd *docDecoder) unknownField(kn *yaml.Node, h int32, md protoreflect.MessageDescriptor, name string) {
	fields := md.Fields()
	known := make([]string, 0, fields.Len())
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if isDeprecated(fd) {
			continue
		}
		known = append(known, fd.JSONName())
	}
	parent := dd.lines.Path(h)
	path := name
	if parent != "" {
		path = parent + "." + name
	}
	if s := suggest(name, known); s != "" {
		dd.errorf(api.CodeUnknownField, kn, path, "unknown field %q in %s%s", name, md.Name(), s)
		return
	}
	dd.errorf(api.CodeUnknownField, kn, path, "unknown field %q in %s; known fields: %s", name, md.Name(), strings.Join(known, ", "))
}

func isDeprecated(fd protoreflect.FieldDescriptor) bool {
	type deprecatable interface{ GetDeprecated() bool }
	if o, ok := fd.Options().(deprecatable); ok {
		return o.GetDeprecated()
	}
	return false
}

// decodeList appends the items of sequence node n to list field fd of m.
func (dd *docDecoder) decodeList(n *yaml.Node, m protoreflect.Message, fd protoreflect.FieldDescriptor, fh int32) {
	n = dd.deref(n)
	if n == nil || isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(fh), "expected a list, got a %s; write it as a YAML list (\"- item\")", nodeKindName(n))
		return
	}
	list := m.Mutable(fd).List()
	for i, item := range n.Content {
		item = dd.deref(item)
		if item == nil {
			return
		}
		ih := dd.lines.AddItem(fh, i, dd.line(item))
		if isNull(item) {
			dd.errorf(api.CodeBadValue, item, dd.lines.Path(ih), "list items must not be null")
			continue
		}
		if fd.Message() != nil {
			el := list.NewElement()
			dd.decodeMessage(item, el.Message(), ih)
			list.Append(el)
			continue
		}
		if v, ok := dd.scalar(item, fd, ih); ok {
			list.Append(v)
		}
	}
}

// decodeMap fills map field fd of m from mapping node n.
func (dd *docDecoder) decodeMap(n *yaml.Node, m protoreflect.Message, fd protoreflect.FieldDescriptor, fh int32) {
	n = dd.deref(n)
	if n == nil || isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(fh), "expected a mapping, got a %s", nodeKindName(n))
		return
	}
	mp := m.Mutable(fd).Map()
	kfd, vfd := fd.MapKey(), fd.MapValue()
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := dd.deref(n.Content[i]), dd.deref(n.Content[i+1])
		if kn == nil || vn == nil {
			return
		}
		if kn.Kind != yaml.ScalarNode {
			dd.errorf(api.CodeBadValue, kn, dd.lines.Path(fh), "map keys must be plain values, got a %s", nodeKindName(kn))
			continue
		}
		kh := dd.lines.AddMapKey(fh, kn.Value, dd.line(kn))
		key, ok := dd.mapKey(kn, kfd, kh)
		if !ok {
			continue
		}
		if mp.Has(key) {
			dd.errorf(api.CodeDuplicateField, kn, dd.lines.Path(kh), "key %q is given more than once; remove one", kn.Value)
			continue
		}
		if isNull(vn) {
			dd.errorf(api.CodeBadValue, vn, dd.lines.Path(kh), "map values must not be null")
			continue
		}
		if vfd.Message() != nil {
			v := mp.NewValue()
			dd.decodeMessage(vn, v.Message(), kh)
			mp.Set(key, v)
			continue
		}
		if v, ok := dd.scalar(vn, vfd, kh); ok {
			mp.Set(key, v)
		}
	}
}

// mapKey converts a YAML key to a map key. JSON object keys are always
// strings, so any scalar is accepted as a string key.
func (dd *docDecoder) mapKey(kn *yaml.Node, kfd protoreflect.FieldDescriptor, kh int32) (protoreflect.MapKey, bool) {
	if kfd.Kind() == protoreflect.StringKind {
		return protoreflect.ValueOfString(kn.Value).MapKey(), true
	}
	v, ok := dd.scalarFromText(kn, kfd, kh, kn.Value)
	if !ok {
		return protoreflect.MapKey{}, false
	}
	return v.MapKey(), true
}

// scalar converts a scalar node to a value for field fd.
func (dd *docDecoder) scalar(n *yaml.Node, fd protoreflect.FieldDescriptor, h int32) (protoreflect.Value, bool) {
	if n.Kind != yaml.ScalarNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected %s, got a %s", kindWant(fd), nodeKindName(n))
		return protoreflect.Value{}, false
	}
	tag := n.ShortTag()
	switch fd.Kind() {
	case protoreflect.StringKind:
		if tag != "!!str" && tag != "!!timestamp" {
			dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a string, got %s %s; quote it", tagName(tag), n.Value)
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfString(n.Value), true
	case protoreflect.BoolKind:
		if tag != "!!bool" {
			dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected true or false, got %s", nodeKindName(n))
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfBool(strings.EqualFold(n.Value, "true")), true
	case protoreflect.BytesKind:
		if tag != "!!str" && tag != "!!binary" {
			dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected base64 text, got %s", nodeKindName(n))
			return protoreflect.Value{}, false
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(strings.Join(strings.Fields(n.Value), "")); err == nil {
				return protoreflect.ValueOfBytes(b), true
			}
		}
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "invalid base64 value")
		return protoreflect.Value{}, false
	case protoreflect.EnumKind:
		ed := fd.Enum()
		if tag == "!!int" {
			num, err := strconv.ParseInt(n.Value, 0, 32)
			if err == nil && ed.Values().ByNumber(protoreflect.EnumNumber(num)) != nil {
				return protoreflect.ValueOfEnum(protoreflect.EnumNumber(num)), true
			}
		} else if tag == "!!str" {
			if ev := ed.Values().ByName(protoreflect.Name(n.Value)); ev != nil {
				return protoreflect.ValueOfEnum(ev.Number()), true
			}
		}
		names := enumNames(ed)
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "invalid value %s%s; valid values: %s", quoteShort(n.Value), suggest(strings.ToUpper(n.Value), names), strings.Join(names, ", "))
		return protoreflect.Value{}, false
	}
	if tag != "!!int" && tag != "!!float" && tag != "!!str" {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected %s, got %s", kindWant(fd), nodeKindName(n))
		return protoreflect.Value{}, false
	}
	return dd.scalarFromText(n, fd, h, n.Value)
}

func enumNames(ed protoreflect.EnumDescriptor) []string {
	vs := ed.Values()
	out := make([]string, 0, vs.Len())
	for i := 0; i < vs.Len(); i++ {
		out = append(out, string(vs.Get(i).Name()))
	}
	return out
}

// scalarFromText parses text as a number or boolean for fd.
func (dd *docDecoder) scalarFromText(n *yaml.Node, fd protoreflect.FieldDescriptor, h int32, text string) (protoreflect.Value, bool) {
	bad := func(why string) (protoreflect.Value, bool) {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "invalid %s %s: %s", kindWant(fd), quoteShort(text), why)
		return protoreflect.Value{}, false
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		switch text {
		case "true":
			return protoreflect.ValueOfBool(true), true
		case "false":
			return protoreflect.ValueOfBool(false), true
		}
		return bad("want true or false")
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		v, err := parseInt(text, 32)
		if err != "" {
			return bad(err)
		}
		return protoreflect.ValueOfInt32(int32(v)), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		v, err := parseInt(text, 64)
		if err != "" {
			return bad(err)
		}
		return protoreflect.ValueOfInt64(v), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		v, err := parseUint(text, 32)
		if err != "" {
			return bad(err)
		}
		return protoreflect.ValueOfUint32(uint32(v)), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		v, err := parseUint(text, 64)
		if err != "" {
			return bad(err)
		}
		return protoreflect.ValueOfUint64(v), true
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		v, ok := parseFloat(text)
		if !ok {
			return bad("not a number")
		}
		if fd.Kind() == protoreflect.FloatKind {
			if !math.IsInf(v, 0) && !math.IsNaN(v) && math.Abs(v) > math.MaxFloat32 {
				return bad("out of range")
			}
			return protoreflect.ValueOfFloat32(float32(v)), true
		}
		return protoreflect.ValueOfFloat64(v), true
	}
	return bad("unsupported field type " + fd.Kind().String())
}

func parseInt(text string, bits int) (int64, string) {
	v, err := strconv.ParseInt(text, 0, bits)
	if err == nil {
		return v, ""
	}
	if f, ok := parseFloat(text); ok && f == math.Trunc(f) {
		if f >= -math.Ldexp(1, bits-1) && f < math.Ldexp(1, bits-1) {
			return int64(f), ""
		}
		return 0, "out of range"
	}
	if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
		return 0, "out of range"
	}
	return 0, "not a whole number"
}

func parseUint(text string, bits int) (uint64, string) {
	if strings.HasPrefix(text, "-") {
		return 0, "must not be negative"
	}
	v, err := strconv.ParseUint(text, 0, bits)
	if err == nil {
		return v, ""
	}
	if f, ok := parseFloat(text); ok && f == math.Trunc(f) {
		if f >= 0 && f < math.Ldexp(1, bits) {
			return uint64(f), ""
		}
		return 0, "out of range"
	}
	if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
		return 0, "out of range"
	}
	return 0, "not a whole number"
}

// parseFloat accepts decimal numbers plus the YAML (.inf, .nan) and
// protobuf JSON (Infinity, NaN) spellings of the special values.
func parseFloat(text string) (float64, bool) {
	switch text {
	case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "Infinity":
		return math.Inf(1), true
	case "-.inf", "-.Inf", "-.INF", "-Infinity":
		return math.Inf(-1), true
	case ".nan", ".NaN", ".NAN", "NaN":
		return math.NaN(), true
	}
	v, err := strconv.ParseFloat(text, 64)
	return v, err == nil
}

func kindWant(fd protoreflect.FieldDescriptor) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return "a string"
	case protoreflect.BoolKind:
		return "true or false"
	case protoreflect.EnumKind:
		return "one of " + strings.Join(enumNames(fd.Enum()), ", ")
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return "a number"
	case protoreflect.BytesKind:
		return "base64 text"
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return "a mapping"
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		return "a non-negative whole number"
	}
	return "a whole number"
}

// decodeWellKnown decodes the google.protobuf types that have a special JSON
// form: durations and timestamps as strings, wrappers as bare values,
// Struct/Value/ListValue as arbitrary YAML.
func (dd *docDecoder) decodeWellKnown(n *yaml.Node, m protoreflect.Message, h int32) {
	md := m.Descriptor()
	switch md.FullName() {
	case "google.protobuf.Duration":
		s, ok := dd.wktText(n, h, "a duration such as 500ms, 2s or 1m")
		if !ok {
			return
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "invalid duration %s: write a number with a unit, such as 500ms, 2s, 1.5s or 1m", quoteShort(s))
			return
		}
		if dp, ok := m.Interface().(*durationpb.Duration); ok {
			dp.Seconds, dp.Nanos = int64(d/time.Second), int32(d%time.Second)
		}
	case "google.protobuf.Timestamp":
		s, ok := dd.wktText(n, h, "an RFC 3339 timestamp")
		if !ok {
			return
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "invalid timestamp %s: use RFC 3339, such as 2024-01-02T15:04:05Z", quoteShort(s))
			return
		}
		if tp, ok := m.Interface().(*timestamppb.Timestamp); ok {
			tp.Seconds, tp.Nanos = t.Unix(), int32(t.Nanosecond())
		}
	case "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
		"google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
		"google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue":
		vfd := md.Fields().ByNumber(1)
		if v, ok := dd.scalar(n, vfd, h); ok {
			m.Set(vfd, v)
		}
	case "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue":
		v, ok := dd.structValue(n, h, 0)
		if !ok {
			return
		}
		var src proto.Message = v
		switch md.FullName() {
		case "google.protobuf.Struct":
			if v.GetStructValue() == nil {
				dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a mapping, got a %s", nodeKindName(n))
				return
			}
			src = v.GetStructValue()
		case "google.protobuf.ListValue":
			if v.GetListValue() == nil {
				dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected a list, got a %s", nodeKindName(n))
				return
			}
			src = v.GetListValue()
		}
		proto.Merge(m.Interface(), src)
	case "google.protobuf.Empty":
		if n.Kind != yaml.MappingNode || len(n.Content) != 0 {
			dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected an empty mapping {}")
		}
	default:
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "values of type %s are not supported", md.FullName())
	}
}

// wktText returns the text of a scalar that encodes a well-known type.
func (dd *docDecoder) wktText(n *yaml.Node, h int32, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "expected %s, got a %s", want, nodeKindName(n))
		return "", false
	}
	return n.Value, true
}

// maxStructDepth bounds nesting in free-form Struct values.
const maxStructDepth = 64

// structValue converts arbitrary YAML to a protobuf Value.
func (dd *docDecoder) structValue(n *yaml.Node, h int32, depth int) (*structpb.Value, bool) {
	n = dd.deref(n)
	if n == nil {
		return nil, false
	}
	if depth > maxStructDepth {
		dd.errorf(api.CodeTooComplex, n, dd.lines.Path(h), "value nested more than %d levels deep", maxStructDepth)
		return nil, false
	}
	switch n.Kind {
	case yaml.MappingNode:
		s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(n.Content)/2)}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn := dd.deref(n.Content[i])
			if kn == nil {
				return nil, false
			}
			if kn.Kind != yaml.ScalarNode {
				dd.errorf(api.CodeBadValue, kn, dd.lines.Path(h), "keys must be strings")
				return nil, false
			}
			v, ok := dd.structValue(n.Content[i+1], h, depth+1)
			if !ok {
				return nil, false
			}
			s.Fields[kn.Value] = v
		}
		return structpb.NewStructValue(s), true
	case yaml.SequenceNode:
		l := &structpb.ListValue{Values: make([]*structpb.Value, 0, len(n.Content))}
		for _, it := range n.Content {
			v, ok := dd.structValue(it, h, depth+1)
			if !ok {
				return nil, false
			}
			l.Values = append(l.Values, v)
		}
		return structpb.NewListValue(l), true
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return structpb.NewNullValue(), true
		case "!!bool":
			return structpb.NewBoolValue(strings.EqualFold(n.Value, "true")), true
		case "!!int", "!!float":
			if f, ok := parseFloat(n.Value); ok {
				return structpb.NewNumberValue(f), true
			}
			if i, err := strconv.ParseInt(n.Value, 0, 64); err == nil {
				return structpb.NewNumberValue(float64(i)), true
			}
		}
		return structpb.NewStringValue(n.Value), true
	}
	dd.errorf(api.CodeBadValue, n, dd.lines.Path(h), "unsupported YAML node")
	return nil, false
}
