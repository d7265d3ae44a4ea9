package testservers

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// KubeIssuer is the service-account token issuer of the test API server.
const KubeIssuer = "https://kubernetes.default.svc.cluster.local"

// KubeAPI is a running kube-apiserver with its own etcd, both on loopback.
// Only the API server runs: no controllers, scheduler or kubelet, so tests
// create what those would (EndpointSlices, pod IPs, service accounts)
// themselves. Authorization is RBAC, as in a real cluster.
type KubeAPI struct {
	*Process
	Etcd *Process
	// URL is the API server's https URL.
	URL string
	// Dir holds the certificates and the kubeconfig.
	Dir string
	// Kubeconfig is a kubeconfig file for a cluster administrator
	// (client certificate in group system:masters).
	Kubeconfig string
	// CAFile is the PEM CA that signed the serving and client certificates.
	CAFile string
	// CAPEM is CAFile's content.
	CAPEM []byte

	ca    *x509.Certificate
	caKey crypto.Signer
}

// StartKube starts etcd and kube-apiserver and waits until /readyz answers,
// which takes about 5 s. Both stop when the test ends.
func StartKube(t testing.TB) *KubeAPI {
	t.Helper()
	etcdBin := Etcd.Require(t)
	apiBin := KubeAPIServer.Require(t)
	start := time.Now()
	dir := t.TempDir()
	port := FreePort(t)
	k := &KubeAPI{Dir: dir, URL: "https://" + hostPort(port)}
	k.makePKI(t)

	etcdClient, etcdPeer := FreePort(t), FreePort(t)
	clientURL := "http://" + hostPort(etcdClient)
	peerURL := "http://" + hostPort(etcdPeer)
	k.Etcd = startProcess(t, "etcd", etcdBin, []string{
		"--name=default",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + clientURL, "--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--unsafe-no-fsync", "--log-level=error",
	}, dir)
	httpc := &http.Client{Timeout: time.Second}
	waitFor(t, k.Etcd, 30*time.Second, func() error {
		resp, err := httpc.Get(clientURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `"health":"true"`) {
			return fmt.Errorf("etcd health: %s", b)
		}
		return nil
	})

	k.Process = startProcess(t, "kube-apiserver", apiBin, []string{
		"--etcd-servers=" + clientURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + filepath.Join(dir, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(dir, "serving.key"),
		"--client-ca-file=" + k.CAFile,
		"--service-account-issuer=" + KubeIssuer,
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--v=0",
	}, dir)
	admin := k.adminClient(t)
	waitFor(t, k.Process, 60*time.Second, func() error {
		resp, err := admin.Get(k.URL + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %s: %s", resp.Status, b)
		}
		return nil
	})
	t.Logf("etcd %s and kube-apiserver %s ready on %s in %s", EtcdVersion, KubeVersion, k.URL, time.Since(start).Round(time.Millisecond))
	return k
}

// adminClient is an HTTP client with the admin certificate.
func (k *KubeAPI) adminClient(t testing.TB) *http.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(k.Dir, "admin.crt"), filepath.Join(k.Dir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(k.ca)
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
	}}
}

// makePKI writes a CA, the API server's serving certificate, an admin
// client certificate, the service-account signing key and a kubeconfig.
func (k *KubeAPI) makePKI(t testing.TB) {
	t.Helper()
	caKey := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "meshd-test-kube-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	k.ca, _ = x509.ParseCertificate(der)
	k.caKey = caKey
	k.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	k.CAFile = filepath.Join(k.Dir, "ca.crt")
	writeFile(t, k.CAFile, k.CAPEM)

	certPEM, keyPEM := k.IssueCert(t, "kube-apiserver", nil, []string{"localhost", "kubernetes", "kubernetes.default"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)}, x509.ExtKeyUsageServerAuth)
	writeFile(t, filepath.Join(k.Dir, "serving.crt"), certPEM)
	writeFile(t, filepath.Join(k.Dir, "serving.key"), keyPEM)

	adminCert, adminKey := k.IssueCert(t, "meshd-test-admin", []string{"system:masters"}, nil, nil, x509.ExtKeyUsageClientAuth)
	writeFile(t, filepath.Join(k.Dir, "admin.crt"), adminCert)
	writeFile(t, filepath.Join(k.Dir, "admin.key"), adminKey)

	saKey := newKey(t)
	saDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(k.Dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saDER}))
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(k.Dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))

	k.Kubeconfig = filepath.Join(k.Dir, "kubeconfig")
	k.writeKubeconfig(t, k.Kubeconfig, "admin",
		"    client-certificate: "+filepath.Join(k.Dir, "admin.crt")+"\n"+
			"    client-key: "+filepath.Join(k.Dir, "admin.key")+"\n")
}

// KubeconfigFor writes a kubeconfig that authenticates with a bearer token
// (a service-account token, say) and returns its path.
func (k *KubeAPI) KubeconfigFor(t testing.TB, name, token string) string {
	t.Helper()
	path := filepath.Join(k.Dir, "kubeconfig-"+name)
	k.writeKubeconfig(t, path, name, "    token: "+token+"\n")
	return path
}

func (k *KubeAPI) writeKubeconfig(t testing.TB, path, user, auth string) {
	t.Helper()
	cfg := "apiVersion: v1\nkind: Config\n" +
		"clusters:\n- name: test\n  cluster:\n    server: " + k.URL + "\n    certificate-authority: " + k.CAFile + "\n" +
		"users:\n- name: " + user + "\n  user:\n" + auth +
		"contexts:\n- name: test\n  context:\n    cluster: test\n    user: " + user + "\n" +
		"current-context: test\n"
	writeFile(t, path, []byte(cfg))
}

// IssueCert issues a certificate from the test CA and returns it and its
// key, PEM. Tests use it for webhook serving certificates and extra users.
func (k *KubeAPI) IssueCert(t testing.TB, cn string, orgs, dns []string, ips []net.IP, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.ca, key.Public(), k.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
