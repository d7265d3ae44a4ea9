package decode

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshd/meshd/modules/galley/api"
)

// IsConfigFile reports whether name has an extension galley reads from
// directories: .yaml, .yml or .json, in any letter case.
func IsConfigFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// LoadPaths decodes files and directory trees. Directories are walked in
// lexical order for files IsConfigFile accepts, skipping hidden entries
// (".git" and the like); a file named explicitly is read whatever its
// extension. Paths that cannot be read become GAL1011 findings, so one bad
// path does not hide the rest.
func (d *Decoder) LoadPaths(paths ...string) Result {
	var r Result
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			r.Findings = append(r.Findings, unreadable(p, err))
			continue
		}
		if !info.IsDir() {
			d.loadFile(&r, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				r.Findings = append(r.Findings, unreadable(path, err))
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
			if e.IsDir() || !IsConfigFile(path) {
				return nil
			}
			d.loadFile(&r, path)
			return nil
		})
		if err != nil {
			r.Findings = append(r.Findings, unreadable(p, err))
		}
	}
	return r
}

func (d *Decoder) loadFile(r *Result, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		r.Findings = append(r.Findings, unreadable(path, err))
		return
	}
	r.Files = append(r.Files, path)
	r.Merge(d.Decode(path, data))
}

func unreadable(path string, err error) api.Finding {
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = pe.Err.Error()
	}
	return api.Finding{
		Code:     api.CodeUnreadable,
		Severity: api.SeverityError,
		File:     path,
		Message:  "cannot read: " + msg,
	}
}
