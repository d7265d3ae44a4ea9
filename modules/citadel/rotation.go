package citadel

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meshd/meshd/modules/citadel/api"
	"github.com/meshd/meshd/modules/citadel/ca"
	bolt "go.etcd.io/bbolt"
)

// Root rotation (self-signed roots only) is a state machine persisted in
// the store's state record; every transition is one transaction, so a
// SIGKILL leaves the store at one step or the next and a restart carries
// on from there:
//
//	idle      one root signs and is the whole bundle.
//	  | meshd ca rotate, or the root expires within rotation.renewBefore:
//	  | make the next root; store it and the new state together
//	staged    bundle = {active, next}; active still signs; leaves get at most
//	  |       rotation.stagedLeafTTL (jittered) so their holders return soon.
//	  | every connected proxy acknowledged the bundle (trivially true with
//	  | none connected), or rotation.ackTimeout passed, or --force
//	switched  next signs; bundle unchanged; callers renew onto the next root
//	  |       as their certificates age (the serving certificate at once).
//	  | no unexpired leaf of the old root is left that was not renewed, or --force
//	idle      the old root leaves the bundle and moves to retired/ without its key.

// ErrPluggedRotation is returned by Rotate with a plugged-in CA, whose roots
// the operator rotates through its files.
var ErrPluggedRotation = errors.New("a plugged-in CA is rotated by changing its files (see docs/ca.md); meshd ca rotate only rotates the self-signed root")

// rotate starts a rotation, or makes a running one skip its waits when
// force is set.
func (m *Module) rotate(force bool, reason string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.rotateLocked(force, reason, m.now()); err != nil {
		return err
	}
	m.wake()
	return nil
}

func (m *Module) rotateLocked(force bool, reason string, now time.Time) error {
	st := m.state
	if st.Mode != ModeSelfSigned {
		return ErrPluggedRotation
	}
	if st.Phase != PhaseIdle {
		if !force || st.Force {
			return nil
		}
		st.Force = true
		if err := m.ns.Update(func(b *bolt.Bucket) error { return saveState(b, &st) }); err != nil {
			return err
		}
		m.state = st
		m.log.Info("root rotation forced: remaining waits are skipped", "phase", st.Phase)
		return nil
	}
	cert, key, err := ca.NewSelfSignedRoot(ca.RootOptions{
		Algorithm: ca.KeyAlgorithm(m.cfg.Root.Algorithm), Lifetime: m.cfg.Root.Lifetime, TrustDomain: m.td, Now: now,
	})
	if err != nil {
		return err
	}
	auth, err := ca.NewAuthority(key, []*x509.Certificate{cert})
	if err != nil {
		return err
	}
	rec, err := m.newRootRecord(cert, key, now)
	if err != nil {
		return err
	}
	st.Phase, st.Next, st.Since = PhaseStaged, rec.ID, now.UTC()
	st.AckDeadline = now.Add(m.cfg.Rotation.AckTimeout).UTC()
	st.Force, st.Reason, st.Requested = force, reason, false
	st.bumpBundle()
	crashPoint("stage")
	err = m.ns.Update(func(b *bolt.Bucket) error {
		roots, err := sub(b, bucketRoots)
		if err != nil {
			return err
		}
		if err := putJSON(roots, []byte(rec.ID), rec); err != nil {
			return err
		}
		return saveState(b, &st)
	})
	if err != nil {
		return fmt.Errorf("store next root: %w", err)
	}
	crashPoint("staged")
	m.state = st
	m.auth[rec.ID] = auth
	m.publishLocked(true)
	m.log.Info("root rotation started: next root added to the trust bundle", "reason", reason, "active", st.Active,
		"next", rec.ID, "bundleVersion", st.BundleVersion, "ackDeadline", st.AckDeadline)
	return nil
}

// stepLocked advances the state machine by at most one step.
func (m *Module) stepLocked(now time.Time) error {
	st := m.state
	if st.Mode != ModeSelfSigned {
		return nil
	}
	switch st.Phase {
	case PhaseIdle:
		if st.Requested {
			return m.rotateLocked(st.Force, "requested offline", now)
		}
		if rb := m.cfg.Rotation.RenewBefore; rb > 0 {
			if exp := m.auth[st.Active].Root().NotAfter; now.After(exp.Add(-rb)) {
				return m.rotateLocked(false, "root expires "+exp.UTC().Format(time.RFC3339), now)
			}
		}
		return nil

	case PhaseStaged:
		acked, connected := m.bundleAcks(st.BundleVersion)
		timedOut := !now.Before(st.AckDeadline)
		if !st.Force && acked < connected && !timedOut {
			return nil
		}
		if timedOut && acked < connected && !st.Force {
			m.log.Warn("not every connected proxy acknowledged the new bundle before rotation.ackTimeout; switching anyway",
				"acked", acked, "connected", connected)
		}
		st.Phase, st.Since = PhaseSwitched, now.UTC()
		if err := m.ns.Update(func(b *bolt.Bucket) error { return saveState(b, &st) }); err != nil {
			return err
		}
		crashPoint("switched")
		m.state = st
		m.publishLocked(true)
		m.log.Info("root rotation: the next root signs now", "next", st.Next, "proxiesAcked", acked, "proxiesConnected", connected)
		return m.renewServingLocked()

	case PhaseSwitched:
		pending := 0
		if !st.Force {
			var err error
			if pending, err = m.pendingOldLeaves(st.Active, now); err != nil {
				return err
			}
			if pending > 0 {
				return nil
			}
		}
		old := st.Active
		st.Phase, st.Active, st.Next, st.Since = PhaseIdle, st.Next, "", now.UTC()
		st.Force, st.Reason, st.AckDeadline, st.LastRotation = false, "", time.Time{}, now.UTC()
		st.bumpBundle()
		crashPoint("retire")
		err := m.ns.Update(func(b *bolt.Bucket) error {
			roots, err := sub(b, bucketRoots)
			if err != nil {
				return err
			}
			retired, err := sub(b, bucketRetired)
			if err != nil {
				return err
			}
			rec, err := loadRoot(b, old)
			if err != nil {
				return err
			}
			rec.Key = nil
			if err := putJSON(retired, []byte(old), rec); err != nil {
				return err
			}
			if err := roots.Delete([]byte(old)); err != nil {
				return err
			}
			return saveState(b, &st)
		})
		if err != nil {
			return err
		}
		crashPoint("retired")
		m.state = st
		delete(m.auth, old)
		m.publishLocked(true)
		if m.bus != nil {
			m.bus.Publish(api.RootsRotated{Old: old, New: st.Active, BundleVersion: st.BundleVersion})
		}
		m.log.Info("root rotation finished: old root retired", "old", old, "active", st.Active, "bundleVersion", st.BundleVersion)
		return nil
	}
	return fmt.Errorf("unknown rotation phase %q", st.Phase)
}

// crashHook, when set (only by the kill tests' child process), is called at
// the named points of signing and rotation and kills the process there.
var crashHook func(point string)

func crashPoint(point string) {
	if crashHook != nil {
		crashHook(point)
	}
}

// bundleAcks reports how many connected proxies acknowledged bundle version
// v (or a later one), out of how many are connected.
func (m *Module) bundleAcks(v uint64) (acked, connected int) {
	for _, got := range m.proxyBundles() {
		connected++
		if got >= v {
			acked++
		}
	}
	return acked, connected
}

// proxyBundles returns the bundle version each connected proxy
// acknowledged (0: none yet). Without an xDS server that reports it,
// no proxies are known.
func (m *Module) proxyBundles() []uint64 {
	if m.xds == nil {
		return nil
	}
	return m.xds.proxyBundles()
}

// pendingOldLeaves counts unexpired certificates issued under root old
// that no later request renewed (by authenticating with them). Holders of
// those still need old in the bundle.
func (m *Module) pendingOldLeaves(old string, now time.Time) (int, error) {
	pending := map[string]bool{}
	renewed := map[string]bool{}
	err := m.ns.View(func(b *bolt.Bucket) error {
		certs, err := sub(b, bucketCerts)
		if err != nil {
			return err
		}
		return certs.ForEach(func(k, v []byte) error {
			var rec certRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("certs/%s: %w", k, err)
			}
			if rec.Renews != "" {
				renewed[rec.Renews] = true
			}
			if rec.Root == old && rec.NotAfter.After(now) && rec.Authenticator != authnServing {
				pending[rec.Serial] = true
			}
			return nil
		})
	})
	n := 0
	for s := range pending {
		if !renewed[s] {
			n++
		}
	}
	return n, err
}
