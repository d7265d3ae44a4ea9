// Package csvsource is the example discovery source: services and their
// endpoints from a CSV file, re-read when the file changes. The csv-source
// plugin (the main package above) serves it out of process; being an
// ordinary registry.Source, it also runs in process, which is how the
// benchmark compares the two paths.
//
// The file has a header row naming its columns, in any order:
//
//	host,namespace,port,address[,port_name,protocol,endpoint_port,labels,locality,weight,health,service_account,network,resolution]
//
// Each row is one endpoint of one service port; rows with the same host and
// namespace make one service. labels is k=v pairs separated by ';',
// locality is region/zone/subzone, health is HEALTHY, UNHEALTHY or
// DRAINING, resolution (STATIC or DNS) applies to the whole service. Lines
// starting with '#' are comments. A file with an error is not used: the
// source keeps reporting the last good one, and logs the error with its
// line.
package csvsource

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
)

// Config is the plugin's config section (modules.plugins.plugins[].config).
type Config struct {
	File         string        `json:"file" required:"true" doc:"the CSV file: a header row, then one endpoint per row"`
	PollInterval time.Duration `json:"pollInterval" doc:"re-read the file this often even without a change notification; 0 never"`
	Debounce     time.Duration `json:"debounce" doc:"wait this long after a change notification before reading the file"`
}

// DefaultConfig returns the defaults: poll every 30 s, 100 ms debounce.
func DefaultConfig() Config {
	return Config{PollInterval: 30 * time.Second, Debounce: 100 * time.Millisecond}
}

// Validate checks the config.
func (c *Config) Validate() error {
	if c.File == "" {
		return errors.New("file: required")
	}
	if c.PollInterval < 0 || c.Debounce < 0 {
		return errors.New("pollInterval and debounce must not be negative")
	}
	return nil
}

// Source reads services from the CSV file.
type Source struct {
	cfg *Config
	log *slog.Logger

	sum  [32]byte
	prev map[model.Key]*model.Service
}

// New returns a source reading cfg.File. cfg is read when Run starts, so a
// plugin may fill it in after New.
func New(cfg *Config, log *slog.Logger) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: log}
}

// Run reports the file's services, then again each time the file changes,
// until ctx ends. It fails only when the file cannot be read at all at the
// start; later errors keep the last good state.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	file := s.cfg.File
	s.sum = [32]byte{}
	// Watch before the first read, so a change made while it reads is not
	// missed.
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Warn("no change notifications; polling only", "err", err)
	} else {
		defer w.Close()
		if err := w.Add(filepath.Dir(file)); err != nil {
			s.log.Warn("no change notifications; polling only", "dir", filepath.Dir(file), "err", err)
		}
	}
	if _, err := s.load(file, sink); err != nil {
		return err
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	var poll <-chan time.Time
	if s.cfg.PollInterval > 0 {
		t := time.NewTicker(s.cfg.PollInterval)
		defer t.Stop()
		poll = t.C
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if filepath.Clean(ev.Name) != filepath.Clean(file) {
				continue
			}
			if s.cfg.Debounce == 0 {
				s.reload(file, sink)
				continue
			}
			debounce.Reset(s.cfg.Debounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			s.log.Warn("change notifications", "err", err)
		case <-debounce.C:
			s.reload(file, sink)
		case <-poll:
			s.reload(file, sink)
		}
	}
}

func (s *Source) reload(file string, sink registry.Sink) {
	if changed, err := s.load(file, sink); err != nil {
		s.log.Error("CSV file not used; keeping the last good services", "file", file, "err", err)
	} else if changed {
		s.log.Debug("CSV file reloaded", "file", file)
	}
}

// load reads the file and reports it when its content changed.
func (s *Source) load(file string, sink registry.Sink) (bool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return false, err
	}
	sum := sha256.Sum256(data)
	if sum == s.sum {
		return false, nil
	}
	services, err := Parse(bytes.NewReader(data), s.prev)
	if err != nil {
		return false, fmt.Errorf("%s: %w", file, err)
	}
	s.sum = sum
	s.prev = make(map[model.Key]*model.Service, len(services))
	for _, svc := range services {
		s.prev[svc.Key()] = svc
	}
	sink.Update(registry.State{Services: services})
	return true, nil
}

var columns = []string{"host", "namespace", "port", "address", "port_name", "protocol", "endpoint_port", "labels", "locality", "weight", "health", "service_account", "network", "resolution"}

// Parse reads a CSV file of endpoints into finalized services, in the
// order they first appear. Services equal to one in prev
// (by key and content) are returned as prev's pointer.
func Parse(r io.Reader, prev map[model.Key]*model.Service) ([]*model.Service, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		known := false
		for _, c := range columns {
			known = known || c == h
		}
		if !known {
			return nil, fmt.Errorf("header: unknown column %q (known: %s)", h, strings.Join(columns, ", "))
		}
		col[h] = i
	}
	for _, req := range columns[:4] {
		if _, ok := col[req]; !ok {
			return nil, fmt.Errorf("header: column %q is required", req)
		}
	}
	var order []*model.Service
	byKey := map[model.Key]*model.Service{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := cr.FieldPos(0)
		get := func(name string) string {
			if i, ok := col[name]; ok && i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		if err := addRow(get, byKey, &order); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
	}
	for i, s := range order {
		s.Finalize()
		if p, ok := prev[s.Key()]; ok && p.DefinitionHash() == s.DefinitionHash() && p.EndpointHash() == s.EndpointHash() {
			order[i] = p
		}
	}
	return order, nil
}

func addRow(get func(string) string, byKey map[model.Key]*model.Service, order *[]*model.Service) error {
	host, ns := get("host"), get("namespace")
	if host == "" || ns == "" {
		return errors.New("host and namespace are required")
	}
	num, err := strconv.ParseUint(get("port"), 10, 16)
	if err != nil || num == 0 {
		return fmt.Errorf("port %q is not a port number", get("port"))
	}
	k := model.Key{Hostname: host, Namespace: ns}
	s := byKey[k]
	if s == nil {
		s = &model.Service{Hostname: host, Namespace: ns, Source: "csv"}
		switch r := strings.ToUpper(get("resolution")); r {
		case "", "STATIC":
		case "DNS":
			s.Resolution = model.ResolutionDNS
		default:
			return fmt.Errorf("resolution %q is not STATIC or DNS", r)
		}
		byKey[k] = s
		*order = append(*order, s)
	}
	port, ok := s.Port(uint32(num))
	if !ok {
		port = model.Port{Number: uint32(num), Name: get("port_name")}
		if port.Name == "" {
			port.Name = fmt.Sprintf("port-%d", num)
		}
		if p := get("protocol"); p != "" {
			port.Protocol = model.ParseProtocol(p)
		} else {
			port.Protocol = model.ProtocolFromPortName(port.Name)
		}
		s.Ports = append(s.Ports, port)
	}
	e := &model.Endpoint{Address: get("address"), ServicePort: port.Number, Namespace: ns,
		ServiceAccount: get("service_account"), Network: get("network")}
	if e.Address == "" {
		return errors.New("address is required")
	}
	if s.Resolution == model.ResolutionStatic {
		if _, err := netip.ParseAddr(e.Address); err != nil {
			return fmt.Errorf("address %q is not an IP address (set resolution DNS for host names)", e.Address)
		}
	}
	e.Port = uint32(num)
	if p := get("endpoint_port"); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("endpoint_port %q is not a port number", p)
		}
		e.Port = uint32(n)
	}
	if l := get("labels"); l != "" {
		e.Labels = map[string]string{}
		for kv := range strings.SplitSeq(l, ";") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return fmt.Errorf("labels %q: want k=v;k=v", l)
			}
			e.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if l := get("locality"); l != "" {
		e.Locality = model.ParseLocality(l)
	}
	if w := get("weight"); w != "" {
		n, err := strconv.ParseUint(w, 10, 32)
		if err != nil {
			return fmt.Errorf("weight %q is not a number", w)
		}
		e.Weight = uint32(n)
	}
	switch h := strings.ToUpper(get("health")); h {
	case "", "HEALTHY":
	case "UNHEALTHY":
		e.Health = model.Unhealthy
	case "DRAINING":
		e.Health = model.Draining
	default:
		return fmt.Errorf("health %q is not HEALTHY, UNHEALTHY or DRAINING", h)
	}
	s.Endpoints = append(s.Endpoints, e)
	return nil
}
