package citadel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/core/store"
	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

// storedKeys returns the key blobs of the stored roots.
func storedKeys(t *testing.T, e *env) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	e.m.ns.View(func(b *bolt.Bucket) error {
		return b.Bucket(bucketRoots).ForEach(func(k, v []byte) error {
			var r rootRecord
			getJSON(b.Bucket(bucketRoots), k, &r)
			out[string(k)] = r.Key
			return nil
		})
	})
	return out
}

func writeKEK(t *testing.T, dir, name string, b byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.Repeat(string([]byte{'0' + b%10}), 64)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKeyEncryptionAtRest(t *testing.T) {
	secrets := t.TempDir()
	kek, wrong := writeKEK(t, secrets, "kek", 1), writeKEK(t, secrets, "wrong", 2)
	withKEK := func(p string) func(*Config) { return func(c *Config) { c.KeyEncryptionKeyFile = p } }

	// Plaintext first; turning encryption on seals the stored key.
	dir := t.TempDir()
	e := newEnv(t, dir, nil)
	before := storedKeys(t, e)
	for id, k := range before {
		if ca.IsSealed(k) {
			t.Fatalf("root %s sealed without a key encryption key", id)
		}
	}
	e.close()
	e = newEnv(t, dir, withKEK(kek))
	after := storedKeys(t, e)
	if len(after) != 1 {
		t.Fatalf("%d roots", len(after))
	}
	for id, k := range after {
		if before[id] == nil || !ca.IsSealed(k) {
			t.Fatalf("root %s: not sealed, or a new root was made", id)
		}
	}
	w := newWorkload(t, "vm", "a")
	e.join(t, w) // signs with the unsealed key
	e.close()

	for _, tt := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no key file", nil, "keyEncryptionKeyFile"},
		{"wrong key file", withKEK(wrong), "does not open"},
	} {
		if _, err := startEnv(t, dir, tt.mutate); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	e = newEnv(t, dir, withKEK(kek))
	if err := e.renew(t, w, 0); err != nil {
		t.Fatalf("same root after restart: %v", err)
	}

	// A rotation stores the next root sealed too.
	if _, err := e.m.Operations().Rotate(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	for id, k := range storedKeys(t, e) {
		if !ca.IsSealed(k) {
			t.Errorf("root %s stored unsealed", id)
		}
	}
}

func TestFilesAreNotWorldReadable(t *testing.T) {
	e := newEnv(t, "", nil)
	st, err := os.Stat(filepath.Join(e.dir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Errorf("store (holding the CA key) has mode %v", st.Mode().Perm())
	}
	bundle, _ := e.m.TrustBundle()
	tf, err := os.ReadFile(e.m.trustFile)
	if err != nil || string(tf) != string(bundle) {
		t.Fatalf("trust bundle file: %v", err)
	}
	loose := writeKEK(t, t.TempDir(), "kek", 3)
	os.Chmod(loose, 0o644)
	if _, err := startEnv(t, "", func(c *Config) { c.KeyEncryptionKeyFile = loose }); err == nil || !strings.Contains(err.Error(), "other users") {
		t.Fatalf("world-readable key encryption key: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"defaults", func(*Config) {}, ""},
		{"algorithm", func(c *Config) { c.Root.Algorithm = "RSA-1024" }, "root.algorithm"},
		{"renewBefore", func(c *Config) { c.Rotation.RenewBefore = c.Root.Lifetime }, "renewBefore"},
		{"ttl", func(c *Config) { c.Leaf.MaxTTL = time.Hour }, "maxTTL"},
		{"names", func(c *Config) { c.Serving.DNSNames = nil }, "dnsNames"},
		{"rate", func(c *Config) { c.RateLimit = RateLimitConfig{PerCallerQPS: 1} }, "burst"},
		{"plugged ignores root", func(c *Config) { c.PluggedCADir = "/x"; c.Root.Algorithm = "x" }, ""},
	} {
		c := Default()
		tt.mutate(c)
		err := c.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}
