package citadel

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/core/store"
	bolt "go.etcd.io/bbolt"
)

// Join tokens let a VM that has no identity yet get its first certificate.
// A token is "<id>.<secret>": the ID names the record, the secret (32
// random bytes) is shown once at creation and stored only as its SHA-256.
// A token is bound to one identity, expires, may be limited to N uses, and
// can be revoked.

// TokenRequest asks for a new join token.
type TokenRequest struct {
	Identity string        `json:"identity"`
	TTL      time.Duration `json:"ttl"`
	// Uses is how many certificates the token may obtain; 0 means any number
	// until it expires.
	Uses int `json:"uses"`
}

// TokenInfo describes a join token, never its secret.
type TokenInfo struct {
	ID       string    `json:"id"`
	Identity string    `json:"identity"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	MaxUses  int       `json:"maxUses"`
	Used     int       `json:"used"`
	LastUsed time.Time `json:"lastUsed,omitzero"`
	Revoked  time.Time `json:"revoked,omitzero"`
	// State is active, expired, used-up or revoked.
	State string `json:"state"`
}

// NewToken is a token just created: the only time its secret is shown.
type NewToken struct {
	TokenInfo
	Token string `json:"token"`
}

// Token errors callers can test for.
var (
	ErrTokenNotFound = errors.New("join token not found")
	errTokenFormat   = errors.New("malformed join token")
)

// MaxTokenTTL bounds join token lifetimes.
const MaxTokenTTL = 30 * 24 * time.Hour

func (r *tokenRecord) state(now time.Time) string {
	switch {
	case !r.Revoked.IsZero():
		return "revoked"
	case !now.Before(r.Expires):
		return "expired"
	case r.MaxUses > 0 && r.Used >= r.MaxUses:
		return "used-up"
	}
	return "active"
}

func (r *tokenRecord) info(now time.Time) TokenInfo {
	return TokenInfo{ID: r.ID, Identity: r.Identity, Created: r.Created, Expires: r.Expires,
		MaxUses: r.MaxUses, Used: r.Used, LastUsed: r.LastUsed, Revoked: r.Revoked, State: r.state(now)}
}

func hashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// createToken stores a new token for identity (already normalised).
func createToken(b *bolt.Bucket, identity string, req TokenRequest, now time.Time) (*NewToken, error) {
	if req.TTL <= 0 || req.TTL > MaxTokenTTL {
		return nil, fmt.Errorf("token ttl %s: must be positive and at most %s", req.TTL, MaxTokenTTL)
	}
	if req.Uses < 0 {
		return nil, fmt.Errorf("token uses %d: must be at least 0 (0: unlimited until expiry)", req.Uses)
	}
	tokens, err := sub(b, bucketTokens)
	if err != nil {
		return nil, err
	}
	var idb [8]byte
	var secret [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(idb[:])
	sec := base64.RawURLEncoding.EncodeToString(secret[:])
	rec := tokenRecord{ID: id, Hash: hashSecret(sec), Identity: identity, Created: now.UTC(),
		Expires: now.Add(req.TTL).UTC(), MaxUses: req.Uses}
	if err := putJSON(tokens, []byte(id), &rec); err != nil {
		return nil, err
	}
	return &NewToken{TokenInfo: rec.info(now), Token: id + "." + sec}, nil
}

func listTokens(b *bolt.Bucket, all bool, now time.Time) ([]TokenInfo, error) {
	tokens, err := sub(b, bucketTokens)
	if err != nil {
		return nil, err
	}
	out := []TokenInfo{}
	err = tokens.ForEach(func(k, v []byte) error {
		var rec tokenRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("token %s: %w", k, err)
		}
		if info := rec.info(now); all || info.State == "active" {
			out = append(out, info)
		}
		return nil
	})
	slices.SortFunc(out, func(a, b TokenInfo) int { return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID)) })
	return out, err
}

func revokeToken(b *bolt.Bucket, id string, now time.Time) error {
	rec, err := getRecord[tokenRecord](b, bucketTokens, id, ErrTokenNotFound)
	if err != nil {
		return err
	}
	if rec.Revoked.IsZero() {
		rec.Revoked = now.UTC()
	}
	return putJSON(b.Bucket(bucketTokens), []byte(id), rec)
}

// tokenAuthenticator accepts a join token sent as a bearer token.
type tokenAuthenticator struct {
	ns  *store.Namespace
	now func() time.Time
}

func (a *tokenAuthenticator) Name() string { return "join-token" }

func (a *tokenAuthenticator) Authenticate(_ context.Context, in *AuthInput) (*Caller, error) {
	// A JWT (header.payload.signature), such as a Kubernetes
	// service-account token, is another authenticator's credential.
	if in.Bearer == "" || strings.Count(in.Bearer, ".") == 2 {
		return nil, ErrNoCredential
	}
	id, secret, ok := strings.Cut(in.Bearer, ".")
	if !ok || len(id) != 16 || secret == "" {
		return nil, errTokenFormat
	}
	var rec *tokenRecord
	err := a.ns.View(func(b *bolt.Bucket) error {
		var err error
		rec, err = a.check(b, id, secret)
		return err
	})
	if err != nil {
		return nil, err
	}
	spend := func(b *bolt.Bucket) error {
		rec, err := a.check(b, id, secret) // again, under the write lock
		if err != nil {
			return err
		}
		rec.Used++
		rec.LastUsed = a.now().UTC()
		return putJSON(b.Bucket(bucketTokens), []byte(id), rec)
	}
	return &Caller{Identity: rec.Identity, Authenticator: a.Name(), Credential: "token " + id, Spend: spend}, nil
}

// check finds token id and refuses it unless secret matches and it is
// active. The reasons go to the log only.
func (a *tokenAuthenticator) check(b *bolt.Bucket, id, secret string) (*tokenRecord, error) {
	rec, err := getRecord[tokenRecord](b, bucketTokens, id, ErrTokenNotFound)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(rec.Hash, hashSecret(secret)) != 1 {
		return nil, fmt.Errorf("join token %s: wrong secret", id)
	}
	if st := rec.state(a.now()); st != "active" {
		return nil, fmt.Errorf("join token %s is %s", id, st)
	}
	return rec, nil
}
