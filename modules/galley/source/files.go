// Package source holds galley's built-in config sources. Files reads Istio
// YAML and JSON from files and directory trees and watches them.
package source

import (
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
)

// FilesOptions configure a file source.
type FilesOptions struct {
	// Paths are files and directory trees. Directories are read for
	// .yaml, .yml and .json files at any depth, skipping hidden entries;
	// a file named explicitly is read whatever its extension.
	Paths []string
	// Debounce is the quiet time after an event before the files are read
	// again; 0 means 100 ms.
	Debounce time.Duration
	// MaxDelay bounds how long a stream of events can put a read off; 0
	// means 10 times Debounce, at least 1 s.
	MaxDelay time.Duration
	// Resync is how often the trees are checked without an event, a
	// safety net for file systems that do not report changes (network
	// mounts); 0 means 1 minute.
	Resync time.Duration
	// DefaultNamespace is given to objects without one; empty: "default".
	DefaultNamespace string
	Log              *slog.Logger
}

// Files is the file source. Each file is an origin, named by its path as
// found from the configured paths (cleaned, not made absolute).
//
// Watching follows what editors and deployment tools do to files rather
// than trusting any one event: every event only marks a path dirty and
// (re)starts the debounce, and the read that follows walks the configured
// paths again. So a save that writes a temp file and renames it over the
// original, a file deleted and created again, a new subdirectory (which
// gets its own watch), a deleted file (reported as removed), a path that
// does not exist yet (its nearest existing parent is watched until it
// appears) and a Kubernetes ConfigMap volume (whose files are symlinks
// swapped atomically through ..data) are all seen the same way: as the
// current content of each file. A file is read again when its size,
// modification time or inode changed, or when an event named it, and
// reported only when its bytes changed. A file that had content and is
// found empty is reported once it stayed empty for MaxDelay, so that a
// truncate-then-write (a shell redirect) is one change, not two.
type Files struct {
	opts  FilesOptions
	paths []string
	dec   *decode.Decoder
}

var _ api.ConfigSource = (*Files)(nil)

// NewFiles returns a file source.
func NewFiles(opts FilesOptions) *Files {
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = max(10*opts.Debounce, time.Second)
	}
	if opts.Resync <= 0 {
		opts.Resync = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	f := &Files{opts: opts, dec: decode.New(decode.Options{DefaultNamespace: opts.DefaultNamespace})}
	for _, p := range opts.Paths {
		f.paths = append(f.paths, filepath.Clean(p))
	}
	return f
}

// fileState is what the source remembers of a file it reported.
type fileState struct {
	info os.FileInfo // nil when the file could not be stat'ed or read
	sum  [32]byte    // SHA-256 of the bytes reported (or of the error)
}

// scanner holds one Run's state.
type scanner struct {
	f     *Files
	w     *fsnotify.Watcher
	files map[string]fileState
	// emptied holds when a file that had content was first seen empty.
	emptied map[string]time.Time
	// settle is when to look again at emptied files (zero: none).
	settle  time.Time
	watched map[string]bool
}

// Run reports every file, then changes, until ctx ends.
func (f *Files) Run(ctx context.Context, sink api.Sink) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	s := &scanner{f: f, w: w, files: map[string]fileState{}, watched: map[string]bool{}, emptied: map[string]time.Time{}}
	sink.Update(s.scan(nil)...)
	sink.Synced()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()

	resync := time.NewTicker(f.opts.Resync)
	defer resync.Stop()
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	var first time.Time // first event of the current burst
	dirty := map[string]bool{}
	all := false
	for {
		fire := false
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			dirty[ev.Name] = true
			if first.IsZero() {
				first = time.Now()
			}
			wait := min(f.opts.Debounce, time.Until(first.Add(f.opts.MaxDelay)))
			quiet.Reset(max(wait, 0))
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				f.opts.Log.Warn("file events overflowed; reading every file again", "err", err)
				all = true
				fire = true
			} else {
				f.opts.Log.Warn("file watcher error", "err", err)
			}
		case <-quiet.C:
			fire = true
		case <-resync.C:
			fire = true
		case <-settle.C:
			fire = true
		}
		if !fire {
			continue
		}
		quiet.Stop()
		if all {
			dirty = nil // nil: every file is dirty
		}
		if ups := s.scan(dirty); len(ups) > 0 {
			sink.Update(ups...)
		}
		first, dirty, all = time.Time{}, map[string]bool{}, false
		settle.Stop()
		if !s.settle.IsZero() {
			settle.Reset(max(time.Until(s.settle), 0))
		}
	}
}

// scan walks the configured paths, fixes up the watches and returns an
// update for every file that changed or disappeared. dirty names paths that
// had events (nil: all); they are read even if their stat looks unchanged.
func (s *scanner) scan(dirty map[string]bool) []api.Update {
	s.settle = time.Time{}
	found := map[string]os.FileInfo{}
	var unreadable []api.Update
	watch := map[string]bool{}
	for _, p := range s.f.paths {
		info, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Watch the nearest parent that exists, to see p appear.
			if dir := existingParent(p); dir != "" {
				watch[dir] = true
			}
			continue
		case err != nil:
			unreadable = append(unreadable, unreadableUpdate(p, err))
			continue
		case !info.IsDir():
			found[p] = info
			watch[filepath.Dir(p)] = true
			continue
		}
		// A trailing separator makes WalkDir follow a root that is a
		// symlink to a directory.
		root := p + string(filepath.Separator)
		err = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			path = filepath.Clean(path)
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					unreadable = append(unreadable, unreadableUpdate(path, err))
				}
				if e != nil && e.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if path != p && strings.HasPrefix(e.Name(), ".") {
				if e.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if e.IsDir() {
				watch[path] = true
				return nil
			}
			if !decode.IsConfigFile(path) {
				return nil
			}
			// Stat follows symlinks (ConfigMap volumes are symlinks).
			info, err := os.Stat(path)
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				unreadable = append(unreadable, unreadableUpdate(path, err))
			case info.Mode().IsRegular():
				found[path] = info
			}
			return nil
		})
		if err != nil {
			unreadable = append(unreadable, unreadableUpdate(p, err))
		}
	}
	s.syncWatches(watch)

	var out []api.Update
	seen := map[string]bool{}
	for _, u := range unreadable {
		if seen[u.Origin] {
			continue
		}
		seen[u.Origin] = true
		sum := sha256.Sum256([]byte(u.Findings[0].Message))
		if prev, ok := s.files[u.Origin]; ok && prev.info == nil && prev.sum == sum {
			continue
		}
		s.files[u.Origin] = fileState{sum: sum}
		out = append(out, u)
	}
	for _, path := range sortedKeys(found) {
		if seen[path] {
			continue
		}
		seen[path] = true
		info := found[path]
		prev, known := s.files[path]
		_, waiting := s.emptied[path]
		if known && prev.info != nil && dirty != nil && !dirty[path] && !waiting && sameStat(prev.info, info) {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				seen[path] = false // gone between walk and read: removed below
				continue
			}
			u := unreadableUpdate(path, err)
			sum := sha256.Sum256([]byte(u.Findings[0].Message))
			if !known || prev.info != nil || prev.sum != sum {
				out = append(out, u)
			}
			s.files[path] = fileState{sum: sum}
			continue
		}
		// Tools that truncate and then write (a shell redirect) leave a
		// file empty for a moment; an emptied file is reported only once
		// it stayed empty for emptySettle, so that a slow writer does not
		// remove its objects for a moment.
		if len(data) == 0 && known && prev.info != nil && prev.sum != emptySum {
			since, ok := s.emptied[path]
			if !ok {
				since = time.Now()
				s.emptied[path] = since
			}
			if wait := since.Add(s.f.emptySettle()); time.Now().Before(wait) {
				if s.settle.IsZero() || wait.Before(s.settle) {
					s.settle = wait
				}
				continue
			}
		}
		delete(s.emptied, path)
		sum := sha256.Sum256(data)
		s.files[path] = fileState{info: info, sum: sum}
		if known && prev.info != nil && prev.sum == sum {
			continue // touched, same bytes
		}
		r := s.f.dec.Decode(path, data)
		out = append(out, api.Update{Origin: path, Objects: r.Objects, Rejected: r.Rejected, Findings: r.Findings})
	}
	for _, path := range sortedKeys(s.files) {
		if !seen[path] {
			delete(s.files, path)
			delete(s.emptied, path)
			out = append(out, api.Update{Origin: path, Removed: true})
		}
	}
	return out
}

// syncWatches makes the watched directories equal want.
func (s *scanner) syncWatches(want map[string]bool) {
	for dir := range s.watched {
		if !want[dir] {
			_ = s.w.Remove(dir) // fails when the directory is gone, which removed the watch
			delete(s.watched, dir)
		}
	}
	for _, dir := range sortedKeys(want) {
		if s.watched[dir] {
			continue
		}
		if err := s.w.Add(dir); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				s.f.opts.Log.Warn("cannot watch directory; changes in it are seen at the next resync", "dir", dir, "err", err)
			}
			continue
		}
		s.watched[dir] = true
	}
}

// emptySum is the digest of no bytes.
var emptySum = sha256.Sum256(nil)

// emptySettle is how long an emptied file must stay empty to count.
func (f *Files) emptySettle() time.Duration { return f.opts.MaxDelay }

// existingParent returns the nearest ancestor of p that is a directory.
func existingParent(p string) string {
	for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
		if info, err := os.Stat(dir); err == nil && info.IsDir() {
			return dir
		}
		if parent := filepath.Dir(dir); parent == dir {
			return ""
		}
	}
}

func sameStat(a, b os.FileInfo) bool {
	return a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) && a.Mode() == b.Mode() && os.SameFile(a, b)
}

func unreadableUpdate(path string, err error) api.Update {
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = pe.Err.Error()
	}
	return api.Update{Origin: path, Findings: []api.Finding{{
		Code: api.CodeUnreadable, Severity: api.SeverityError, File: path, Message: "cannot read: " + msg,
	}}}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
