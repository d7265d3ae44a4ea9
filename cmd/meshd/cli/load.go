package cli

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/meshd/meshd/core"
	"github.com/meshd/meshd/core/config"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// loaded is the effective configuration of one command invocation.
type loaded struct {
	Root    core.Config
	File    string
	Enabled []core.ModuleID
	Modules map[core.ModuleID]any // decoded module configs (enabled modules only)
}

// flagKeys maps persistent serve flags to config keys. Flags win over the
// environment, which wins over the file.
var flagKeys = map[string]string{
	"data-dir":      "dataDir",
	"admin-address": "admin.address",
	"log-level":     "log.level",
	"log-format":    "log.format",
}

// addConfigFlags adds -c and the key flags to fs.
func addConfigFlags(fs *pflag.FlagSet) {
	fs.StringP("config", "c", "", "config file (YAML); env MESHD_CONFIG")
	fs.String("data-dir", "", "data dir (dataDir)")
	fs.String("admin-address", "", "admin HTTP address (admin.address)")
	fs.String("log-level", "", "log level (log.level)")
	fs.String("log-format", "", "log format (log.format)")
}

// loadConfig builds the effective config from defaults, the YAML file,
// MESHD_* environment variables and flags, in increasing precedence. viper is
// created here, per command, and never escapes this function.
func loadConfig(fs *pflag.FlagSet, reg *core.Registry) (*loaded, error) {
	v := viper.New()
	v.SetEnvPrefix("MESHD")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()

	for _, f := range config.Fields(core.DefaultConfig(), "") {
		if f.Path == "modules" {
			continue
		}
		v.SetDefault(f.Path, defaultValue(core.DefaultConfig(), f.Path))
	}
	for _, info := range reg.All() {
		prefix := "modules." + string(info.ID)
		v.SetDefault(prefix+".enabled", !info.DisabledByDefault)
		if info.Config == nil {
			continue
		}
		def := info.Config()
		for _, f := range config.Fields(def, prefix) {
			v.SetDefault(f.Path, defaultValue(def, strings.TrimPrefix(f.Path, prefix+".")))
		}
	}

	file, _ := fs.GetString("config")
	if file == "" {
		file = os.Getenv("MESHD_CONFIG")
	}
	var doc *yaml.Node
	if file != "" {
		raw, node, err := readYAML(file)
		if err != nil {
			return nil, err
		}
		doc = node
		if err := checkFileKeys(raw, reg, file, doc); err != nil {
			return nil, err
		}
		if err := v.MergeConfigMap(raw); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	for flag, key := range flagKeys {
		if f := fs.Lookup(flag); f != nil && f.Changed {
			v.Set(key, f.Value.String())
		}
	}

	settings := v.AllSettings()
	sections := map[string]map[string]any{}
	if mods, ok := settings["modules"].(map[string]any); ok {
		for id, sec := range mods {
			if m, ok := sec.(map[string]any); ok {
				sections[canonicalModuleID(reg, id)] = m
			}
		}
	}
	delete(settings, "modules")

	l := &loaded{Root: core.DefaultConfig(), File: file}
	if err := config.Decode(settings, &l.Root, ""); err != nil {
		return nil, locate(err, file, doc)
	}
	if err := l.Root.Validate(); err != nil {
		return nil, locate(err, file, doc)
	}
	l.Root.Modules = sections
	enabled, configs, err := core.ResolveModules(reg, sections)
	if err != nil {
		return nil, locate(err, file, doc)
	}
	l.Enabled, l.Modules = enabled, configs
	return l, nil
}

// canonicalModuleID undoes viper's lowercasing of module IDs.
func canonicalModuleID(reg *core.Registry, id string) string {
	for _, info := range reg.All() {
		if strings.EqualFold(string(info.ID), id) {
			return string(info.ID)
		}
	}
	return id
}

// defaultValue returns the default at a dotted path of a config struct, in
// the plain form viper and env overrides expect (durations as strings).
func defaultValue(cfg any, path string) any {
	cur := config.ToValue(cfg, false)
	for part := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// readYAML parses a config file, keeping its node tree for line lookups. A
// syntax error is reported as file:line: reason.
func readYAML(file string) (map[string]any, *yaml.Node, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	var node yaml.Node
	if err := yaml.Unmarshal(data, &node); err != nil {
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			return nil, nil, fmt.Errorf("%s:%s: %s", file, m[1], m[2])
		}
		return nil, nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	raw := map[string]any{}
	if len(node.Content) > 0 {
		if node.Content[0].Kind != yaml.MappingNode {
			return nil, nil, fmt.Errorf("%s:%d: config must be a mapping of keys, not a %s", file, node.Content[0].Line, kindName(node.Content[0].Kind))
		}
		if err := node.Decode(&raw); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	return raw, &node, nil
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	}
	return "node"
}

// checkFileKeys reports unknown keys in the file with their path and line,
// before viper lowercases everything.
func checkFileKeys(raw map[string]any, reg *core.Registry, file string, doc *yaml.Node) error {
	root := core.DefaultConfig()
	rootOnly := map[string]any{}
	for k, val := range raw {
		if strings.EqualFold(k, "modules") {
			continue
		}
		rootOnly[k] = val
	}
	if err := config.Decode(rootOnly, &root, ""); err != nil {
		return locate(err, file, doc)
	}
	var mods map[string]any
	for k, val := range raw {
		if strings.EqualFold(k, "modules") {
			m, ok := val.(map[string]any)
			if !ok && val != nil {
				return locate(&config.KeyError{Path: k, Err: errors.New("must be a mapping of module IDs to sections")}, file, doc)
			}
			mods = m
		}
	}
	ids := make([]string, 0, len(mods))
	for id := range mods {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		path := "modules." + id
		info, ok := reg.Get(core.ModuleID(id))
		if !ok {
			return locate(&config.KeyError{Path: path, Err: fmt.Errorf("%w (no such module; see `meshd modules list`)", config.ErrUnknownKey)}, file, doc)
		}
		sec, ok := mods[id].(map[string]any)
		if !ok {
			if mods[id] == nil {
				continue
			}
			return locate(&config.KeyError{Path: path, Err: errors.New("must be a mapping")}, file, doc)
		}
		rest := map[string]any{}
		for k, val := range sec {
			if k == "enabled" {
				if _, err := strconv.ParseBool(fmt.Sprint(val)); err != nil {
					return locate(&config.KeyError{Path: path + ".enabled", Err: fmt.Errorf("not a boolean: %v", val)}, file, doc)
				}
				continue
			}
			rest[k] = val
		}
		if info.Config == nil {
			for k := range rest {
				return locate(&config.KeyError{Path: path + "." + k, Err: fmt.Errorf("%w (module %s takes no config)", config.ErrUnknownKey, id)}, file, doc)
			}
			continue
		}
		if err := config.Decode(rest, info.Config(), path); err != nil {
			return locate(err, file, doc)
		}
	}
	return nil
}

// locate adds the file and line to a config.KeyError, or to each of a
// joined error's.
func locate(err error, file string, doc *yaml.Node) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			locate(e, file, doc) // KeyErrors are pointers: located in place
		}
		return err
	}
	var ke *config.KeyError
	if errors.As(err, &ke) && ke.File == "" && file != "" {
		ke.File = file
		ke.Line = config.LineOf(doc, ke.Path)
		if ke.Line == 0 {
			ke.File = ""
		}
	}
	return err
}

// effective renders the effective config for `meshd config print`, secrets
// redacted, module sections filled with their defaults.
func (l *loaded) effective(reg *core.Registry) map[string]any {
	root := l.Root
	root.Modules = nil
	out := config.ToValue(root, true).(map[string]any)
	delete(out, "modules")
	mods := map[string]any{}
	for _, info := range reg.All() {
		sec := map[string]any{"enabled": slices.Contains(l.Enabled, info.ID)}
		cfg, ok := l.Modules[info.ID]
		if !ok && info.Config != nil {
			cfg = info.Config()
		}
		if cfg != nil && !reflect.ValueOf(cfg).IsNil() {
			for k, val := range config.ToValue(cfg, true).(map[string]any) {
				sec[k] = val
			}
		}
		mods[string(info.ID)] = sec
	}
	out["modules"] = mods
	return out
}
