package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshd/meshd/core/atomicfile"
)

// Names of the certificate files, Istio's, in FilesConfig.Dir.
const (
	FileCertChain = "cert-chain.pem" // leaf, then intermediates
	FileKey       = "key.pem"        // PKCS #8
	FileRootCert  = "root-cert.pem"  // trust bundle: every trusted root
)

// dataLink is the symlink naming the current version directory.
const dataLink = "..data"

// certDir keeps a set of files that must change together, the way
// Kubernetes updates projected volumes: each version is written to a new
// hidden directory, then one rename of the ..data symlink switches every
// file at once, and each file name is a symlink through ..data. A reader
// (gRPC's file_watcher, Envoy, the agent after a crash) sees the old set
// or the new one, never a new key with an old certificate.
type certDir struct {
	dir   string
	share bool // group-readable
}

func (d *certDir) dirMode() os.FileMode {
	if d.share {
		return 0o750
	}
	return 0o700
}

func (d *certDir) keyMode() os.FileMode {
	if d.share {
		return 0o640
	}
	return 0o600
}

// write replaces the set with files (name to content). Names are plain
// file names; the key file gets the key mode, the rest 0644.
func (d *certDir) write(files map[string][]byte) error {
	if err := os.MkdirAll(d.dir, d.dirMode()); err != nil {
		return fmt.Errorf("certificate directory: %w", err)
	}
	if err := os.Chmod(d.dir, d.dirMode()); err != nil {
		return fmt.Errorf("certificate directory: %w", err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	version := "..v" + hex.EncodeToString(rnd[:])
	vdir := filepath.Join(d.dir, version)
	if err := os.Mkdir(vdir, d.dirMode()); err != nil {
		return fmt.Errorf("certificate directory: %w", err)
	}
	fail := func(err error) error {
		os.RemoveAll(vdir)
		return fmt.Errorf("write certificate files in %s: %w", d.dir, err)
	}
	for name, data := range files {
		mode := os.FileMode(0o644)
		if name == FileKey {
			mode = d.keyMode()
		}
		if err := writeSynced(filepath.Join(vdir, name), data, mode); err != nil {
			return fail(err)
		}
	}
	if err := atomicfile.SyncDir(vdir); err != nil {
		return fail(err)
	}
	tmpLink := filepath.Join(d.dir, dataLink+".tmp")
	os.Remove(tmpLink)
	if err := os.Symlink(version, tmpLink); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpLink, filepath.Join(d.dir, dataLink)); err != nil {
		os.Remove(tmpLink)
		return fail(err)
	}
	for name := range files {
		link := filepath.Join(d.dir, name)
		target := filepath.Join(dataLink, name)
		if cur, err := os.Readlink(link); err == nil && cur == target {
			continue
		}
		tmp := link + ".tmp"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return fmt.Errorf("write certificate files in %s: %w", d.dir, err)
		}
		if err := os.Rename(tmp, link); err != nil {
			return fmt.Errorf("write certificate files in %s: %w", d.dir, err)
		}
	}
	if err := atomicfile.SyncDir(d.dir); err != nil {
		return fmt.Errorf("write certificate files in %s: %w", d.dir, err)
	}
	d.prune(version)
	return nil
}

// prune removes version directories other than keep: old sets, and sets a
// crash left half-written.
func (d *certDir) prune(keep string) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..v") && e.Name() != keep && e.IsDir() {
			os.RemoveAll(filepath.Join(d.dir, e.Name()))
		}
	}
}

// read returns the current content of name, or an error wrapping
// os.ErrNotExist when there is no set yet.
func (d *certDir) read(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(d.dir, name))
}

// path returns the stable path of name (through ..data).
func (d *certDir) path(name string) string { return filepath.Join(d.dir, name) }

func writeSynced(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	err = f.Chmod(mode) // whatever the umask
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}
