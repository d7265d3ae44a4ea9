// Package config decodes meshd's YAML configuration strictly: every section
// is decoded over its Default() values, and a key that no field accepts is an
// error naming its full path (modules.pilot.debounce.quite), with the line it
// sits on when the YAML source is known.
//
// Config structs use `mapstructure` tags for key names, `doc` tags for the
// one-line description in docs/config-reference.md, and `secret:"true"` for
// values `meshd config print` must redact.
package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"go.yaml.in/yaml/v3"
)

// KeyError reports a problem with one config key.
type KeyError struct {
	Path string // full dotted path
	File string // source file, when known
	Line int    // 1-based line in File, when known
	Err  error
}

func (e *KeyError) Error() string {
	loc := ""
	switch {
	case e.File != "" && e.Line > 0:
		loc = fmt.Sprintf("%s:%d: ", e.File, e.Line)
	case e.File != "":
		loc = e.File + ": "
	}
	return fmt.Sprintf("%s%s: %v", loc, e.Path, e.Err)
}

func (e *KeyError) Unwrap() error { return e.Err }

// ErrUnknownKey is wrapped by KeyError for keys no field accepts.
var ErrUnknownKey = errors.New("unknown key")

// Decode decodes in over out, a pointer to a struct holding defaults.
// prefix is the path of in within the whole config ("modules.pilot"), used
// in error messages.
func Decode(in map[string]any, out any, prefix string) error {
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("config.Decode: out must be a non-nil pointer, got %T", out)
	}
	if err := checkKeys(in, rv.Elem().Type(), prefix); err != nil {
		return err
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           out,
		WeaklyTypedInput: true, // environment variables arrive as strings
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(in); err != nil {
		return decodeErr(err, prefix)
	}
	return nil
}

// decodeErr turns mapstructure's error into a KeyError on the offending key.
func decodeErr(err error, prefix string) error {
	var de *mapstructure.DecodeError
	if !errors.As(err, &de) {
		return &KeyError{Path: prefix, Err: err}
	}
	path := join(prefix, de.Name())
	inner := errors.Unwrap(de)
	var pe *mapstructure.ParseError
	var ue *mapstructure.UnconvertibleTypeError
	switch {
	case errors.As(inner, &pe):
		return &KeyError{Path: path, Err: fmt.Errorf("invalid value %q: want %s", fmt.Sprint(pe.Value), typeName(pe.Expected.Type()))}
	case errors.As(inner, &ue):
		return &KeyError{Path: path, Err: fmt.Errorf("invalid value %q: want %s", fmt.Sprint(ue.Value), typeName(ue.Expected.Type()))}
	}
	return &KeyError{Path: path, Err: inner}
}

// checkKeys walks in against t and reports the first key no field takes,
// in sorted key order so the error is deterministic.
func checkKeys(in map[string]any, t reflect.Type, prefix string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		path := join(prefix, k)
		f, ok := fieldByKey(t, k)
		if !ok {
			return &KeyError{Path: path, Err: ErrUnknownKey}
		}
		if err := checkValue(in[k], f.Type, path); err != nil {
			return err
		}
	}
	return nil
}

func checkValue(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if t == reflect.TypeFor[time.Time]() {
			return nil
		}
		if m, ok := asMap(v); ok {
			return checkKeys(m, t, path)
		}
	case reflect.Map:
		if m, ok := asMap(v); ok {
			for k, mv := range m {
				if err := checkValue(mv, t.Elem(), join(path, k)); err != nil {
					return err
				}
			}
		}
	case reflect.Slice:
		if items, ok := v.([]any); ok {
			for i, item := range items {
				if err := checkValue(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func asMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, v := range m {
			out[fmt.Sprint(k)] = v
		}
		return out, true
	}
	return nil, false
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// keyName returns the config key of a struct field and whether it is
// exported config at all.
func keyName(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := f.Tag.Get("mapstructure")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return "", false
	}
	if name == "" {
		name = f.Name
	}
	return name, true
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if name, ok := keyName(f); ok && strings.EqualFold(name, key) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// Field describes one leaf key, for docs and environment binding.
type Field struct {
	Path    string // dotted key path, as written in YAML
	Type    string // Go-ish type name: string, bool, int, duration, []string, map
	Default string // the default rendered as YAML would show it
	Doc     string
	Secret  bool
}

// EnvVar returns the environment variable that overrides the key.
func (f Field) EnvVar() string { return EnvVar(f.Path) }

// EnvVar maps a dotted key path to its MESHD_* environment variable.
func EnvVar(path string) string {
	return "MESHD_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(path))
}

// Fields lists the leaf keys of v (a struct or pointer to one) under prefix,
// in declaration order. Maps and slices are leaves.
func Fields(v any, prefix string) []Field {
	var out []Field
	walk(reflect.ValueOf(v), prefix, "", false, &out)
	return out
}

func walk(v reflect.Value, path, doc string, secret bool, out *[]Field) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			// A nil pointer to a list is an empty list (MeshConfig keeps
			// its lists behind pointers to stay comparable).
			if k := v.Type().Elem().Kind(); k == reflect.Slice || k == reflect.Map {
				*out = append(*out, Field{Path: path, Type: typeName(v.Type().Elem()), Default: render(reflect.Zero(v.Type().Elem())), Doc: doc, Secret: secret})
			}
			return
		}
		v = v.Elem()
	}
	if v.Kind() == reflect.Struct && v.Type() != reflect.TypeFor[time.Time]() {
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, ok := keyName(f)
			if !ok {
				continue
			}
			walk(v.Field(i), join(path, name), f.Tag.Get("doc"), f.Tag.Get("secret") == "true", out)
		}
		return
	}
	*out = append(*out, Field{Path: path, Type: typeName(v.Type()), Default: render(v), Doc: doc, Secret: secret})
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "duration"
	case t.Kind() == reflect.Slice:
		return "[]" + typeName(t.Elem())
	case t.Kind() == reflect.Map:
		return "map"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64, t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		return "int"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "float"
	}
	return t.Kind().String()
}

func render(v reflect.Value) string {
	if v.Type() == reflect.TypeFor[time.Duration]() {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			if v.Kind() == reflect.Map {
				return "{}"
			}
			return "[]"
		}
		b, _ := yaml.Marshal(ToValue(v.Interface(), false))
		return strings.TrimSpace(strings.ReplaceAll(string(b), "\n", " "))
	}
	return fmt.Sprint(v.Interface())
}

// ToValue converts a config struct to plain maps, slices and scalars keyed
// like the YAML (durations as strings such as "15s"), for viper defaults and
// for printing. With redact, non-empty secret fields become "<redacted>".
func ToValue(v any, redact bool) any {
	return toValue(reflect.ValueOf(v), redact)
}

func toValue(v reflect.Value, redact bool) any {
	if !v.IsValid() {
		return nil
	}
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Type() == reflect.TypeFor[time.Duration]() {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, ok := keyName(f)
			if !ok {
				continue
			}
			fv := v.Field(i)
			if redact && f.Tag.Get("secret") == "true" && !fv.IsZero() {
				out[name] = "<redacted>"
				continue
			}
			out[name] = toValue(fv, redact)
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		iter := v.MapRange()
		for iter.Next() {
			out[fmt.Sprint(iter.Key().Interface())] = toValue(iter.Value(), redact)
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return []any{}
		}
		out := make([]any, v.Len())
		for i := range v.Len() {
			out[i] = toValue(v.Index(i), redact)
		}
		return out
	}
	return v.Interface()
}

// LineOf returns the 1-based line of a dotted path in a YAML document node,
// or 0 when the path is not in the document. Matching is case-insensitive,
// as key matching is.
func LineOf(doc *yaml.Node, path string) int {
	n := doc
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n == nil || path == "" {
		return 0
	}
	line := 0
	for part := range strings.SplitSeq(path, ".") {
		idx := -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
			part = part[:i]
		}
		if n.Kind != yaml.MappingNode {
			return line
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if strings.EqualFold(n.Content[i].Value, part) {
				line = n.Content[i].Line
				n = n.Content[i+1]
				found = true
				break
			}
		}
		if !found {
			return line
		}
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}
