package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type inner struct {
	Name  string            `mapstructure:"name" doc:"a name"`
	Token string            `mapstructure:"token" secret:"true"`
	Tags  map[string]string `mapstructure:"tags"`
}

type sample struct {
	Address string           `mapstructure:"address" doc:"listen address"`
	Quiet   time.Duration    `mapstructure:"quiet"`
	Limit   int              `mapstructure:"limit"`
	On      bool             `mapstructure:"on"`
	Hosts   []string         `mapstructure:"hosts"`
	Inner   inner            `mapstructure:"inner"`
	Items   []inner          `mapstructure:"items"`
	ByName  map[string]inner `mapstructure:"byName"`
	hidden  int
}

func defaults() *sample {
	return &sample{Address: "127.0.0.1:1", Quiet: time.Second, Limit: 5, Inner: inner{Name: "n"}}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]any
		check   func(*sample) bool
		wantErr string
	}{
		{name: "empty keeps defaults", in: map[string]any{}, check: func(s *sample) bool {
			return s.Address == "127.0.0.1:1" && s.Limit == 5 && s.Quiet == time.Second && s.Inner.Name == "n"
		}},
		{name: "overlay", in: map[string]any{"address": ":2", "quiet": "250ms"}, check: func(s *sample) bool { return s.Address == ":2" && s.Quiet == 250*time.Millisecond && s.Limit == 5 }},
		{name: "case-insensitive keys (viper lowercases)", in: map[string]any{"byname": map[string]any{"x": map[string]any{"name": "y"}}}, check: func(s *sample) bool { return s.ByName["x"].Name == "y" }},
		{name: "env strings are weakly typed", in: map[string]any{"limit": "9", "on": "true", "hosts": "a,b"}, check: func(s *sample) bool { return s.Limit == 9 && s.On && len(s.Hosts) == 2 }},
		{name: "nested defaults survive", in: map[string]any{"inner": map[string]any{"token": "t"}}, check: func(s *sample) bool { return s.Inner.Name == "n" && s.Inner.Token == "t" }},
		{name: "unknown top-level", in: map[string]any{"adress": "x"}, wantErr: "mod.adress: unknown key"},
		{name: "unknown nested", in: map[string]any{"inner": map[string]any{"nmae": "x"}}, wantErr: "mod.inner.nmae: unknown key"},
		{name: "unknown in slice element", in: map[string]any{"items": []any{map[string]any{"name": "a"}, map[string]any{"bogus": 1}}}, wantErr: "mod.items[1].bogus: unknown key"},
		{name: "unknown in map value", in: map[string]any{"byName": map[string]any{"k": map[string]any{"nope": 1}}}, wantErr: "mod.byName.k.nope: unknown key"},
		{name: "unexported field is not a key", in: map[string]any{"hidden": 1}, wantErr: "mod.hidden: unknown key"},
		{name: "bad int", in: map[string]any{"limit": "many"}, wantErr: `mod.limit: invalid value "many": want int`},
		{name: "bad bool", in: map[string]any{"on": "perhaps"}, wantErr: `mod.on: invalid value "perhaps": want bool`},
		{name: "bad duration", in: map[string]any{"quiet": "soon"}, wantErr: "mod.quiet:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := defaults()
			err := Decode(tt.in, s, "mod")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode() = %v, want error containing %q", err, tt.wantErr)
				}
				var ke *KeyError
				if !errors.As(err, &ke) {
					t.Fatalf("error is %T, want *KeyError", err)
				}
				if strings.Contains(tt.wantErr, "unknown key") && !errors.Is(err, ErrUnknownKey) {
					t.Fatalf("unknown-key error does not wrap ErrUnknownKey")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(s) {
				t.Fatalf("decoded %+v", s)
			}
		})
	}
}

func TestFieldsAndEnvVars(t *testing.T) {
	fields := Fields(defaults(), "modules.x")
	byPath := map[string]Field{}
	for _, f := range fields {
		byPath[f.Path] = f
	}
	for path, want := range map[string]Field{
		"modules.x.address":     {Type: "string", Default: "127.0.0.1:1", Doc: "listen address"},
		"modules.x.quiet":       {Type: "duration", Default: "1s"},
		"modules.x.inner.name":  {Type: "string", Default: "n", Doc: "a name"},
		"modules.x.inner.token": {Type: "string", Secret: true},
		"modules.x.hosts":       {Type: "[]string", Default: "[]"},
		"modules.x.byName":      {Type: "map", Default: "{}"},
	} {
		got, ok := byPath[path]
		if !ok {
			t.Errorf("missing field %s", path)
			continue
		}
		want.Path = path
		if got != want {
			t.Errorf("%s = %+v, want %+v", path, got, want)
		}
	}
	if got := EnvVar("modules.pilot.debounce.quiet"); got != "MESHD_MODULES_PILOT_DEBOUNCE_QUIET" {
		t.Fatalf("EnvVar = %s", got)
	}
	if got := EnvVar("mesh.trustDomain"); got != "MESHD_MESH_TRUSTDOMAIN" {
		t.Fatalf("EnvVar = %s", got)
	}
}

func TestToValueRedacts(t *testing.T) {
	s := defaults()
	s.Inner.Token = "hunter2"
	v := ToValue(s, true).(map[string]any)
	if got := v["inner"].(map[string]any)["token"]; got != "<redacted>" {
		t.Fatalf("token = %v", got)
	}
	if got := v["quiet"]; got != "1s" {
		t.Fatalf("quiet = %v, want 1s", got)
	}
	if got := ToValue(s, false).(map[string]any)["inner"].(map[string]any)["token"]; got != "hunter2" {
		t.Fatalf("unredacted token = %v", got)
	}
	empty := defaults()
	if got := ToValue(empty, true).(map[string]any)["inner"].(map[string]any)["token"]; got != "" {
		t.Fatalf("an empty secret should print empty, got %v", got)
	}
}

func TestLineOf(t *testing.T) {
	src := `dataDir: ./data
admin:
  address: ":1"
modules:
  pilot:
    debounce:
      quiet: 1s
    items:
      - name: a
      - name: b
        bogus: 1
`
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"dataDir":                      1,
		"admin.address":                3,
		"Admin.Address":                3,
		"modules.pilot.debounce.quiet": 7,
		"modules.pilot.items[1].bogus": 11,
		"modules.pilot.items[1]":       10,
		"modules.pilot.missing":        5, // nearest known ancestor
		"nowhere":                      0,
	} {
		if got := LineOf(&doc, path); got != want {
			t.Errorf("LineOf(%s) = %d, want %d", path, got, want)
		}
	}
}
