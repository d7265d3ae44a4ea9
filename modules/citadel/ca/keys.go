package ca

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MarshalKey encodes a CA key as PKCS#8 DER.
func MarshalKey(k crypto.Signer) ([]byte, error) {
	return x509.MarshalPKCS8PrivateKey(k)
}

// ParseKey decodes a PKCS#8, PKCS#1 (RSA) or SEC 1 (EC) DER private key.
func ParseKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		switch k := k.(type) {
		case *ecdsa.PrivateKey:
			return k, nil
		case *rsa.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("unsupported CA key type %T", k)
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("not a PKCS#8, SEC 1 or PKCS#1 private key")
}

// ParseKeyPEM decodes the first private key block of data.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no private key PEM block")
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			if _, enc := b.Headers["Proc-Type"]; enc {
				return nil, errors.New("encrypted PEM keys are not supported; use keyEncryptionKeyFile for encryption at rest")
			}
			return ParseKey(b.Bytes)
		}
	}
}

// CheckPrivateFile refuses a file that others (not owner, not group) can
// read or write: a CA key, or the key that encrypts CA keys, is never
// world-readable.
func CheckPrivateFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o007 != 0 {
		return fmt.Errorf("%s is accessible to other users (mode %04o); run chmod o-rwx on it, or better chmod 600", path, perm)
	}
	return nil
}

// sealMagic starts every sealed blob, so plaintext and sealed keys can be
// told apart in the store.
var sealMagic = []byte("meshd-sealed-v1:")

// Sealer encrypts CA keys at rest with AES-256-GCM under a key read from a
// file. The additional data binds a sealed key to its name, so a sealed key
// cannot be swapped for another root's.
type Sealer struct {
	aead cipher.AEAD
}

// LoadSealer reads a 32-byte key from path: 64 hex digits, base64, or the
// raw bytes. The file must not be accessible to other users.
func LoadSealer(path string) (*Sealer, error) {
	if err := CheckPrivateFile(path); err != nil {
		return nil, fmt.Errorf("key encryption key: %w", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key encryption key: %w", err)
	}
	key, err := decodeKEK(raw)
	if err != nil {
		return nil, fmt.Errorf("key encryption key %s: %w", path, err)
	}
	return NewSealer(key)
}

// NewSealer returns a Sealer for a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("key encryption key must be 32 bytes, got %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

func decodeKEK(raw []byte) ([]byte, error) {
	if len(raw) == 32 {
		return raw, nil
	}
	s := strings.TrimSpace(string(raw))
	if len(s) == 64 {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == 32 {
		return b, nil
	}
	return nil, errors.New("want 32 bytes: raw, 64 hex digits or base64 (e.g. `openssl rand -hex 32`)")
}

// Seal encrypts plain, binding it to aad.
func (s *Sealer) Seal(plain, aad []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append(bytes.Clone(sealMagic), nonce...)
	return s.aead.Seal(out, nonce, plain, aad), nil
}

// Open decrypts a blob made by Seal with the same aad.
func (s *Sealer) Open(blob, aad []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(blob, sealMagic)
	if !ok {
		return nil, errors.New("not a sealed key")
	}
	n := s.aead.NonceSize()
	if len(rest) < n {
		return nil, errors.New("sealed key truncated")
	}
	plain, err := s.aead.Open(nil, rest[:n], rest[n:], aad)
	if err != nil {
		return nil, errors.New("sealed key does not open with this key encryption key")
	}
	return plain, nil
}

// IsSealed reports whether blob was made by Seal.
func IsSealed(blob []byte) bool { return bytes.HasPrefix(blob, sealMagic) }
