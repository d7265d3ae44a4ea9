package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	basev1 "github.com/meshd/meshd/core/plugin/proto/base/v1"
)

// FieldType is the type of one config key of a plugin.
type FieldType string

// Field types a plugin config may use. Config sections are flat on purpose:
// they are written by operators in meshd.yaml and checked by the host
// before the plugin sees them, so the schema language stays small.
const (
	TypeString     FieldType = "string"
	TypeBool       FieldType = "bool"
	TypeInt        FieldType = "int"
	TypeNumber     FieldType = "number"
	TypeDuration   FieldType = "duration" // a Go duration string: "30s", "5m"
	TypeStringList FieldType = "[]string"
	TypeStringMap  FieldType = "map[string]string"
)

// Field is one key of a plugin's config section.
type Field struct {
	Name        string    `json:"name"`
	Type        FieldType `json:"type"`
	Required    bool      `json:"required,omitempty"`
	Description string    `json:"description,omitempty"`
	// Default is used when the key is absent; nil for none.
	Default any `json:"default,omitempty"`
	// Allowed, when set, lists the only values a string field may take.
	Allowed []string `json:"allowed,omitempty"`
}

// Schema describes a plugin's config section.
type Schema []Field

// Limits on what a plugin may declare, so a broken plugin cannot make the
// host allocate without bound.
const (
	maxSchemaFields = 256
	maxConfigBytes  = 1 << 20
)

// Check reports a schema that cannot be used: empty or duplicate names
// (keys match case-insensitively), unknown types, defaults of the wrong
// type.
func (s Schema) Check() error {
	if len(s) > maxSchemaFields {
		return fmt.Errorf("schema has %d fields, more than %d", len(s), maxSchemaFields)
	}
	seen := map[string]bool{}
	for _, f := range s {
		if f.Name == "" || strings.ContainsAny(f.Name, ". \t") {
			return fmt.Errorf("schema field %q: names must be non-empty, without dots or spaces", f.Name)
		}
		lower := strings.ToLower(f.Name)
		if seen[lower] {
			return fmt.Errorf("schema field %q declared twice", f.Name)
		}
		seen[lower] = true
		switch f.Type {
		case TypeString, TypeBool, TypeInt, TypeNumber, TypeDuration, TypeStringList, TypeStringMap:
		default:
			return fmt.Errorf("schema field %q: unknown type %q", f.Name, f.Type)
		}
		if f.Default != nil {
			v, err := f.coerce(f.Default)
			if err != nil {
				return fmt.Errorf("schema field %q: default: %w", f.Name, err)
			}
			if len(f.Allowed) > 0 && !slices.Contains(f.Allowed, fmt.Sprint(v)) {
				return fmt.Errorf("schema field %q: default %q is not one of %s", f.Name, v, strings.Join(f.Allowed, ", "))
			}
		}
	}
	return nil
}

// Apply checks a config section from meshd.yaml against the schema and
// returns it keyed by the schema's field names (meshd.yaml keys match in any
// letter case, because the config loader lowercases them), with defaults
// filled in and values in their JSON form. Errors name the key as
// prefix.key.
func (s Schema) Apply(in map[string]any, prefix string) (map[string]any, error) {
	out := make(map[string]any, len(s))
	byName := make(map[string]Field, len(s))
	for _, f := range s {
		byName[strings.ToLower(f.Name)] = f
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var errs []error
	for _, k := range keys {
		f, ok := byName[strings.ToLower(k)]
		if !ok {
			errs = append(errs, fmt.Errorf("%s.%s: unknown key (the plugin's keys: %s)", prefix, k, s.names()))
			continue
		}
		v, err := f.coerce(in[k])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.%s: %w", prefix, f.Name, err))
			continue
		}
		if len(f.Allowed) > 0 && !slices.Contains(f.Allowed, fmt.Sprint(v)) {
			errs = append(errs, fmt.Errorf("%s.%s: %q is not one of %s", prefix, f.Name, v, strings.Join(f.Allowed, ", ")))
			continue
		}
		out[f.Name] = v
	}
	for _, f := range s {
		if _, ok := out[f.Name]; ok {
			continue
		}
		switch {
		case f.Default != nil:
			v, err := f.coerce(f.Default)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.%s: plugin's default: %w", prefix, f.Name, err))
				continue
			}
			out[f.Name] = v
		case f.Required:
			errs = append(errs, fmt.Errorf("%s.%s: required (%s)", prefix, f.Name, f.describe()))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func (s Schema) names() string {
	if len(s) == 0 {
		return "none"
	}
	n := make([]string, len(s))
	for i, f := range s {
		n[i] = f.Name
	}
	return strings.Join(n, ", ")
}

func (f Field) describe() string {
	if f.Description == "" {
		return string(f.Type)
	}
	return string(f.Type) + ": " + f.Description
}

// coerce converts a decoded YAML or JSON value to the field's JSON form.
func (f Field) coerce(v any) (any, error) {
	switch f.Type {
	case TypeString:
		if s, ok := v.(string); ok {
			return s, nil
		}
	case TypeBool:
		switch b := v.(type) {
		case bool:
			return b, nil
		case string:
			if p, err := strconv.ParseBool(b); err == nil {
				return p, nil
			}
		}
	case TypeInt:
		if n, ok := toFloat(v); ok && n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), nil
		}
		if s, ok := v.(string); ok {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				return n, nil
			}
		}
	case TypeNumber:
		if n, ok := toFloat(v); ok {
			return n, nil
		}
		if s, ok := v.(string); ok {
			if n, err := strconv.ParseFloat(s, 64); err == nil {
				return n, nil
			}
		}
	case TypeDuration:
		if s, ok := v.(string); ok {
			if d, err := time.ParseDuration(s); err == nil {
				return d.String(), nil
			}
		}
		if d, ok := v.(time.Duration); ok {
			return d.String(), nil
		}
	case TypeStringList:
		switch l := v.(type) {
		case []string:
			return slices.Clone(l), nil
		case []any:
			out := make([]string, 0, len(l))
			for _, e := range l {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("invalid value %v: want a list of strings", v)
				}
				out = append(out, s)
			}
			return out, nil
		}
	case TypeStringMap:
		out := map[string]string{}
		switch m := v.(type) {
		case map[string]string:
			for k, e := range m {
				out[k] = e
			}
			return out, nil
		case map[string]any:
			for k, e := range m {
				switch e.(type) {
				case string, bool, int, int64, float64, uint64:
					out[k] = fmt.Sprint(e)
				default:
					return nil, fmt.Errorf("invalid value for %s: want a string", k)
				}
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("invalid value %v: want %s", v, f.Type)
}

func toFloat(v any) (float64, bool) {
	if n, ok := v.(json.Number); ok {
		f, err := n.Float64()
		return f, err == nil
	}
	rv := reflect.ValueOf(v)
	switch {
	case !rv.IsValid():
		return 0, false
	case rv.CanInt():
		return float64(rv.Int()), true
	case rv.CanUint():
		return float64(rv.Uint()), true
	case rv.CanFloat():
		return rv.Float(), true
	}
	return 0, false
}

// SchemaOf derives a schema from a config struct (or a pointer to one):
// each exported field with a json tag is a key named by the tag; its `doc`
// tag is the description, `required:"true"` makes it required,
// `allowed:"a,b"` restricts its values, and the value it holds is the
// default. Supported field types: string, bool, integers, floats,
// time.Duration, []string and map[string]string.
func SchemaOf(v any) (Schema, error) {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			rv = reflect.New(rv.Type().Elem()).Elem()
			break
		}
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return nil, fmt.Errorf("SchemaOf: %T is not a struct", v)
	}
	t := rv.Type()
	var s Schema
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := jsonName(sf)
		if !ok {
			continue
		}
		f := Field{Name: name, Description: sf.Tag.Get("doc"), Required: sf.Tag.Get("required") == "true"}
		if a := sf.Tag.Get("allowed"); a != "" {
			f.Allowed = strings.Split(a, ",")
		}
		fv := rv.Field(i)
		typ, err := fieldType(sf.Type)
		if err != nil {
			return nil, fmt.Errorf("SchemaOf: field %s: %w", sf.Name, err)
		}
		f.Type = typ
		if !fv.IsZero() {
			if typ == TypeDuration {
				f.Default = time.Duration(fv.Int()).String()
			} else {
				f.Default = fv.Interface()
			}
		}
		s = append(s, f)
	}
	if err := s.Check(); err != nil {
		return nil, err
	}
	return s, nil
}

func jsonName(sf reflect.StructField) (string, bool) {
	if !sf.IsExported() {
		return "", false
	}
	name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
	if name == "-" {
		return "", false
	}
	if name == "" {
		name = sf.Name
	}
	return name, true
}

var durationType = reflect.TypeFor[time.Duration]()

func fieldType(t reflect.Type) (FieldType, error) {
	switch {
	case t == durationType:
		return TypeDuration, nil
	case t.Kind() == reflect.String:
		return TypeString, nil
	case t.Kind() == reflect.Bool:
		return TypeBool, nil
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64, t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		return TypeInt, nil
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return TypeNumber, nil
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		return TypeStringList, nil
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String && t.Elem().Kind() == reflect.String:
		return TypeStringMap, nil
	}
	return "", fmt.Errorf("type %s is not supported in plugin config", t)
}

// DecodeConfig decodes a config the host sent (SetConfig's JSON object)
// into out, a pointer to the struct SchemaOf described. Durations arrive as
// strings and are parsed here.
func DecodeConfig(raw []byte, out any) error {
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("DecodeConfig: out must be a pointer to a struct, got %T", out)
	}
	var m map[string]json.RawMessage
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	rv = rv.Elem()
	t := rv.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := jsonName(sf)
		if !ok {
			continue
		}
		v, ok := m[name]
		if !ok {
			continue
		}
		fv := rv.Field(i)
		if sf.Type == durationType {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return fmt.Errorf("config %s: %w", name, err)
			}
			d, err := time.ParseDuration(s)
			if err != nil {
				return fmt.Errorf("config %s: %w", name, err)
			}
			fv.SetInt(int64(d))
			continue
		}
		if err := json.Unmarshal(v, fv.Addr().Interface()); err != nil {
			return fmt.Errorf("config %s: %w", name, err)
		}
	}
	return nil
}

// schemaToProto and schemaFromProto convert between the Go and wire forms.
func schemaToProto(s Schema) (*basev1.ConfigSchemaResponse, error) {
	out := &basev1.ConfigSchemaResponse{}
	for _, f := range s {
		pf := &basev1.Field{Name: f.Name, Type: fieldTypeToProto[f.Type], Required: f.Required, Description: f.Description, Allowed: f.Allowed}
		if f.Default != nil {
			b, err := json.Marshal(f.Default)
			if err != nil {
				return nil, fmt.Errorf("schema field %q: default: %w", f.Name, err)
			}
			pf.DefaultJson = string(b)
		}
		out.Fields = append(out.Fields, pf)
	}
	return out, nil
}

func schemaFromProto(p *basev1.ConfigSchemaResponse) (Schema, error) {
	if len(p.GetFields()) > maxSchemaFields {
		return nil, fmt.Errorf("schema has %d fields, more than %d", len(p.GetFields()), maxSchemaFields)
	}
	s := make(Schema, 0, len(p.GetFields()))
	for _, pf := range p.GetFields() {
		t, ok := fieldTypeFromProto[pf.GetType()]
		if !ok {
			return nil, fmt.Errorf("schema field %q: unknown type %v", pf.GetName(), pf.GetType())
		}
		f := Field{Name: pf.GetName(), Type: t, Required: pf.GetRequired(), Description: pf.GetDescription(), Allowed: pf.GetAllowed()}
		if pf.GetDefaultJson() != "" {
			if err := json.Unmarshal([]byte(pf.GetDefaultJson()), &f.Default); err != nil {
				return nil, fmt.Errorf("schema field %q: default: %w", pf.GetName(), err)
			}
		}
		s = append(s, f)
	}
	return s, s.Check()
}

var fieldTypeToProto = map[FieldType]basev1.FieldType{
	TypeString:     basev1.FieldType_FIELD_TYPE_STRING,
	TypeBool:       basev1.FieldType_FIELD_TYPE_BOOL,
	TypeInt:        basev1.FieldType_FIELD_TYPE_INT,
	TypeNumber:     basev1.FieldType_FIELD_TYPE_NUMBER,
	TypeDuration:   basev1.FieldType_FIELD_TYPE_DURATION,
	TypeStringList: basev1.FieldType_FIELD_TYPE_STRING_LIST,
	TypeStringMap:  basev1.FieldType_FIELD_TYPE_STRING_MAP,
}

var fieldTypeFromProto = func() map[basev1.FieldType]FieldType {
	m := map[basev1.FieldType]FieldType{}
	for k, v := range fieldTypeToProto {
		m[v] = k
	}
	return m
}()
