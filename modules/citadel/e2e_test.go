package citadel

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// opensslVerify checks a response chain (leaf, intermediates, bundle) with
// Debian's openssl, a verifier meshd did not write.
func opensslVerify(t *testing.T, chain []string) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("MESHD_CI") == "1" {
			t.Fatal("openssl not found: .ci/run must install it (apt-get install -y openssl)")
		}
		t.Skip("openssl is not installed; .ci/run must install it (apt-get install -y openssl) for this check")
	}
	dir := t.TempDir()
	write := func(name string, parts []string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(parts, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", write("bundle.pem", chain[len(chain)-1:])}
	if len(chain) > 2 {
		args = append(args, "-untrusted", write("inter.pem", chain[1:len(chain)-1]))
	}
	leaf := write("leaf.pem", chain[:1])
	out, err := exec.Command(bin, append(args, leaf)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

// spiffeVerify parses the chain and key as an X.509-SVID with go-spiffe and
// verifies it against the bundle, returning the SPIFFE ID.
func spiffeVerify(t *testing.T, w *workload) string {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(w.key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	svid, err := x509svid.Parse([]byte(strings.Join(w.chain[:len(w.chain)-1], "")), keyPEM)
	if err != nil {
		t.Fatalf("go-spiffe rejects the SVID: %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString(testTD)
	b, err := x509bundle.Parse(td, []byte(w.chain[len(w.chain)-1]))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, b)
	if err != nil {
		t.Fatalf("go-spiffe does not verify the SVID against the bundle: %v", err)
	}
	if id.String() != svid.ID.String() {
		t.Fatalf("verified ID %s, parsed ID %s", id, svid.ID)
	}
	return id.String()
}

// TestEndToEndJoinThenRenew is the VM join flow over the network with
// Istio's own client: a join token buys the first certificate, which then
// renews itself over mTLS.
func TestEndToEndJoinThenRenew(t *testing.T) {
	e := newEnv(t, "", nil)
	w := newWorkload(t, "vm", "billing")
	ctx := context.Background()

	// 1. Join: server-authenticated TLS, bearer join token.
	tok := e.token(t, "vm/billing", time.Hour, 1)
	c, closeFn := e.client(t, nil, nil)
	resp, err := request(ctx, c, w.csr(t, nil, nil), tok, 2*time.Hour)
	closeFn()
	if err != nil {
		t.Fatal(err)
	}
	w.chain = resp.CertChain
	if len(w.chain) != 2 {
		t.Fatalf("chain has %d elements, want leaf and root", len(w.chain))
	}
	opensslVerify(t, w.chain)
	if id := spiffeVerify(t, w); id != w.id {
		t.Fatalf("SPIFFE ID %s, want %s", id, w.id)
	}
	first := w.leaf(t)
	if got := first.NotAfter.Sub(first.NotBefore); got < 2*time.Hour || got > 2*time.Hour+2*time.Minute {
		t.Errorf("lifetime %v, want the requested 2h (plus backdating)", got)
	}

	// 2. Renew: mTLS with the first certificate, no token.
	if err := e.renew(t, w, 0); err != nil {
		t.Fatal(err)
	}
	opensslVerify(t, w.chain)
	if id := spiffeVerify(t, w); id != w.id {
		t.Fatalf("renewed SPIFFE ID %s, want %s", id, w.id)
	}
	second := w.leaf(t)
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	if got := second.NotAfter.Sub(second.NotBefore); got < 24*time.Hour || got > 24*time.Hour+2*time.Minute {
		t.Errorf("default lifetime %v, want 24h", got)
	}

	// 3. Both are on record with who asked and how.
	certs, err := e.m.Operations().ListCerts(ctx, CertFilter{Identity: w.id})
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 {
		t.Fatalf("ledger has %d certificates for %s, want 2: %+v", len(certs), w.id, certs)
	}
	renewal, join := certs[0], certs[1]
	if !strings.HasPrefix(join.Authenticator, "join-token: token ") || !strings.HasPrefix(renewal.Authenticator, "client-cert: serial ") {
		t.Errorf("authenticators %q, %q", join.Authenticator, renewal.Authenticator)
	}
	if renewal.Renews != join.Serial || !strings.HasPrefix(join.Caller, "127.0.0.1:") {
		t.Errorf("renewal renews %q (want %q), caller %q", renewal.Renews, join.Serial, join.Caller)
	}
	if want := fmt.Sprintf("%032x", first.SerialNumber); join.Serial != want {
		t.Errorf("ledger serial %s, certificate serial %s", join.Serial, want)
	}
	if e.counter("citadel_server_success_cert_issuance_count") != 2 || e.counter("citadel_server_csr_count") != 2 {
		t.Errorf("metrics: issued %v of %v CSRs", e.counter("citadel_server_success_cert_issuance_count"), e.counter("citadel_server_csr_count"))
	}
}
