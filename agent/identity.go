package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshd/meshd/core/atomicfile"
)

// tokenState is what the agent remembers about join tokens it used, in
// <dataDir>/state.json, so it can say "this token was already used"
// rather than only "refused".
type tokenState struct {
	TokenID string    `json:"tokenId,omitempty"`
	UsedAt  time.Time `json:"usedAt,omitzero"`
	// Serial and Received are the current certificate's serial and when
	// it arrived, which its renewal time counts from.
	Serial   string    `json:"serial,omitempty"`
	Received time.Time `json:"received,omitzero"`
}

func (a *Agent) statePath() string { return filepath.Join(a.cfg.DataDir, "state.json") }

func (a *Agent) readState() tokenState {
	var s tokenState
	if b, err := os.ReadFile(a.statePath()); err == nil {
		_ = json.Unmarshal(b, &s)
	}
	return s
}

func (a *Agent) writeState(s tokenState) {
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := atomicfile.WriteBytes(a.statePath(), append(b, '\n'), 0o600); err != nil {
		a.log.Warn("cannot record the join token's use", "error", err)
	}
}

// certRejected reports whether meshd's TLS handshake refused the agent's
// certificate (a TLS alert from the server): it chains to a root meshd no
// longer trusts, typically after a root rotation the agent slept through.
func certRejected(err error) bool {
	return err != nil && strings.Contains(err.Error(), "remote error: tls:")
}

// errNoToken says the agent needs a join token and has none.
type errNoToken struct {
	why  string
	file string
	id   string
}

func (e *errNoToken) Error() string {
	return fmt.Sprintf("%s, and there is no join token in %s: create one on the control plane with "+
		"`meshd ca token create --identity %s --ttl 1h --uses 1` and write it to that file (the agent reads it on its next attempt)",
		e.why, e.file, e.id)
}

// readToken returns the join token in the token file, or "" when the file
// is missing or empty.
func (a *Agent) readToken() (string, error) {
	b, err := os.ReadFile(a.cfg.Identity.JoinTokenFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("identity.joinTokenFile: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// trustedRoots is what meshd's certificate is checked against: the bundle
// that came with the current certificate (meshd's, kept current over xDS),
// plus the configured roots, so an operator can repair trust by editing
// rootCertFile.
func (a *Agent) trustedRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	if c := a.cur.Load(); c != nil {
		for _, r := range c.roots {
			pool.AddCert(r)
		}
	}
	a.mu.Lock()
	for _, r := range a.anchors {
		pool.AddCert(r)
	}
	a.mu.Unlock()
	return pool
}

// clientCert is the certificate the agent presents to meshd: the current
// one while it is valid (an expired one would fail the handshake).
func (a *Agent) clientCert() *tls.Certificate {
	if c := a.cur.Load(); c.valid(a.now()) {
		return c.tlsCrt
	}
	return nil
}

// ensureAnchors makes sure the agent has roots to check meshd against
// before it has a certificate: from rootCertFile, or fetched and checked
// against rootPin.
func (a *Agent) ensureAnchors(ctx context.Context) error {
	a.mu.Lock()
	have := len(a.anchors) > 0
	a.mu.Unlock()
	if have || a.pin == nil {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, a.cfg.ControlPlane.DialTimeout)
	defer cancel()
	bundle, err := fetchBundle(tctx, a.cfg.ControlPlane.Address, a.cfg.ControlPlane.ServerName, a.pin, a.bootstrapNode())
	if err != nil {
		return err
	}
	roots, err := parseCerts(bundle)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.anchors = roots
	a.mu.Unlock()
	a.log.Info("trust bundle fetched and checked against the root pin", "roots", len(roots), "pin", a.cfg.ControlPlane.RootPin)
	return nil
}

// obtain gets a certificate: renewed with the current one while it is
// valid, else with the join token.
func (a *Agent) obtain(ctx context.Context) (*creds, error) {
	cur := a.cur.Load()
	id := a.cfg.SPIFFEID()
	why := "the agent has no certificate"
	if cur.valid(a.now()) {
		tctx, cancel := context.WithTimeout(ctx, a.cfg.ControlPlane.DialTimeout)
		c, err := requestCert(tctx, a.cfg.ControlPlane.Address, a.verifier, cur.tlsCrt, "", id, a.cfg.Identity.CertTTL)
		cancel()
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, ErrRefused) && !certRejected(err) && cur.untrusted == nil {
			return nil, err // meshd out of reach: retry with the certificate
		}
		// The CA no longer takes the certificate (its root was retired, or
		// it was issued by a CA that is gone): only a token can help.
		why = fmt.Sprintf("renewal with the current certificate failed (%v)", err)
	} else if cur != nil {
		why = fmt.Sprintf("the certificate expired at %s (meshd was out of reach for longer than its lifetime)", cur.leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	token, err := a.readToken()
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, &errNoToken{why: why, file: a.cfg.Identity.JoinTokenFile, id: "ns/" + a.cfg.Identity.Namespace + "/sa/" + a.cfg.Identity.ServiceAccount}
	}
	if err := a.ensureAnchors(ctx); err != nil {
		return nil, err
	}
	tctx, cancel := context.WithTimeout(ctx, a.cfg.ControlPlane.DialTimeout)
	defer cancel()
	c, err := requestCert(tctx, a.cfg.ControlPlane.Address, a.verifier, nil, token, id, a.cfg.Identity.CertTTL)
	tokenID, _, _ := strings.Cut(token, ".")
	if errors.Is(err, ErrRefused) {
		msg := fmt.Sprintf("join token %s in %s was refused (unknown, expired, used up or revoked; meshd's log says which)", tokenID, a.cfg.Identity.JoinTokenFile)
		if st := a.readState(); st.TokenID == tokenID {
			msg += fmt.Sprintf("; this agent already used it at %s", st.UsedAt.UTC().Format(time.RFC3339))
		}
		return nil, fmt.Errorf("%w: %s", ErrRefused, msg)
	}
	if err != nil {
		return nil, err
	}
	st := a.readState()
	st.TokenID, st.UsedAt = tokenID, a.now().UTC()
	a.writeState(st)
	a.log.Info("certificate obtained with the join token; the token is no longer needed", "token", tokenID, "identity", id)
	return c, nil
}

// adopt makes c the current identity: stored (all files at once), then
// handed to SDS, the session and everyone else watching.
func (a *Agent) adopt(c *creds) {
	c.schedule(a.now())
	st := a.readState()
	st.Serial, st.Received = c.serial(), a.now().UTC()
	if err := storeCreds(a.files, c); err != nil {
		a.log.Error("cannot store the certificate; serving it from memory (a restart would need a join token)", "error", err)
	}
	a.writeState(st)
	a.cur.Store(c)
	a.notify()
	a.log.Info("certificate installed", "identity", a.cfg.SPIFFEID(), "serial", c.serial(),
		"notAfter", c.leaf.NotAfter.UTC().Format(time.RFC3339), "renewAt", c.renewAt.UTC().Format(time.RFC3339), "roots", len(c.roots))
}

// updateBundle takes a new trust bundle from meshd (over xDS): stored with
// the current key and certificate, and pushed.
func (a *Agent) updateBundle(bundle []byte) error {
	cur := a.cur.Load()
	if cur == nil || bytes.Equal(cur.bundlePEM, bundle) {
		return nil
	}
	c, err := cur.withBundle(bundle)
	if err != nil {
		return fmt.Errorf("trust bundle from meshd: %w", err)
	}
	if err := storeCreds(a.files, c); err != nil {
		a.log.Error("cannot store the trust bundle", "error", err)
	}
	a.cur.Store(c)
	a.notify()
	a.log.Info("trust bundle updated", "roots", len(c.roots))
	if c.untrusted != nil {
		a.log.Warn("the certificate does not chain to the new trust bundle; renewing now", "error", c.untrusted)
		a.kickRenew()
	}
	return nil
}

func (a *Agent) kickRenew() {
	select {
	case a.renewKick <- struct{}{}:
	default:
	}
}

// watch returns a channel signalled (coalesced) whenever the identity or
// bundle changes.
func (a *Agent) watch() <-chan struct{} {
	ch := make(chan struct{}, 1)
	a.mu.Lock()
	a.watchers = append(a.watchers, ch)
	a.mu.Unlock()
	return ch
}

func (a *Agent) notify() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ch := range a.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// renewLoop renews the certificate at its jittered time, retrying with
// backoff, until ctx ends. After expiry it turns to the join token and
// says so until one is there.
func (a *Agent) renewLoop(ctx context.Context) {
	b := a.backoff()
	for {
		c := a.cur.Load()
		wait := c.renewAt.Sub(a.now())
		if c.untrusted != nil {
			wait = 0
		}
		if !sleep(ctx, wait, a.renewKick) {
			return
		}
		for {
			n, err := a.obtain(ctx)
			if err == nil {
				a.adopt(n)
				b.reset()
				break
			}
			if ctx.Err() != nil {
				return
			}
			d := b.next()
			cur := a.cur.Load()
			attrs := []any{"error", err, "retryIn", d.Round(time.Millisecond)}
			if cur.valid(a.now()) {
				attrs = append(attrs, "expiresIn", cur.leaf.NotAfter.Sub(a.now()).Round(time.Second))
				a.log.Warn("certificate renewal failed; the current certificate is still valid", attrs...)
			} else {
				a.log.Error("no valid certificate: workloads cannot authenticate until this is fixed", attrs...)
			}
			if !sleep(ctx, d, a.renewKick) {
				return
			}
		}
	}
}

// sleep waits d, or until kick fires; false when ctx ended.
func sleep(ctx context.Context, d time.Duration, kick <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-kick:
	}
	return true
}

// backoff is exponential from 1 s (or retryMax if smaller) to retryMax,
// with ±20% jitter so a fleet of agents does not retry in step.
type backoff struct {
	cur, min, max time.Duration
}

func (a *Agent) backoff() *backoff {
	m := min(time.Second, a.cfg.ControlPlane.RetryMax)
	return &backoff{min: m, max: a.cfg.ControlPlane.RetryMax}
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return jitter(b.cur)
}

func (b *backoff) reset() { b.cur = 0 }
