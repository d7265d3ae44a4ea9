package platforms

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testservers/kubetest"
	"github.com/meshd/meshd/modules/galley/kubesource"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

var vsGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}

// kubeWorkload creates a pod (for labels and identity) and an EndpointSlice
// for service svc pointing at a backend, published under testNetAddr
// (EndpointSlices may not hold loopback addresses; see testNet).
func kubeWorkload(t *testing.T, c *kubetest.Cluster, ns, svc, pod, sa, version string, b *backend) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod, Labels: map[string]string{"app": svc, "version": version}},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: pod, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To(int32(b.port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{testNetAddr},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func kubeService(t *testing.T, c *kubetest.Cluster, ns, name string, port int32) {
	t.Helper()
	_, err := c.Client.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "grpc", Port: port, AppProtocol: ptr.To("grpc")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

const reviewsDR = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

func reviewsVS(subset string) string {
	return fmt.Sprintf(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: %s}
`, subset)
}

// An update that galley refuses: a negative timeout and a port out of range.
const invalidReviewsVS = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - timeout: -3s
    route:
    - destination: {host: reviews, subset: v2, port: {number: 70000}}
`

// putVS creates or replaces the VirtualService reviews. meshd writes the
// object's status as it accepts or rejects it, which bumps its
// resourceVersion, so a replace retries on conflict like kubectl does.
func putVS(c *kubetest.Cluster, doc string) error {
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		return err
	}
	ri := c.Dynamic.Resource(vsGVR).Namespace("shop")
	ctx := context.Background()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u := &unstructured.Unstructured{Object: runtime.DeepCopyJSON(m)}
		cur, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
		if err != nil {
			_, err = ri.Create(ctx, u, metav1.CreateOptions{})
			return err
		}
		u.SetResourceVersion(cur.GetResourceVersion())
		_, err = ri.Update(ctx, u, metav1.UpdateOptions{})
		return err
	})
}

// TestKubernetes: Service, EndpointSlices, DestinationRule and
// VirtualService in a real API server; a grpc-go client follows the
// VirtualService through meshd; the webhook refuses invalid config, status
// reports it when it gets in anyway, and the accepted config keeps serving;
// service-account tokens buy certificates for their own identity only.
func TestKubernetes(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real kube-apiserver and a grpc-go client process")
	}
	c := kubetest.Start(t)
	c.InstallCRDs()
	c.Namespace("shop")
	c.ServiceAccount("shop", "reviews")
	c.ServiceAccount("shop", "ratings")
	v1, v2 := newBackend(t, "reviews-v1"), newBackend(t, "reviews-v2")
	kubeService(t, c, "shop", "reviews", 9080)
	kubeWorkload(t, c, "shop", "reviews", "reviews-v1", "reviews", "v1", v1)
	kubeWorkload(t, c, "shop", "reviews", "reviews-v2", "reviews", "v2", v2)
	if err := c.Apply([]byte(reviewsDR)); err != nil {
		t.Fatal(err)
	}
	if err := putVS(c, reviewsVS("v2")); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	certPEM, keyPEM := c.IssueCert(t, "meshd-webhook", nil, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	m := startMeshd(t, options{Kubeconfig: c.Kubeconfig, WebhookCert: certFile, WebhookKey: keyFile})

	cl := newClient(t, m.xds.Addr().String(), "shop")
	const target = "xds:///reviews.shop.svc.cluster.local:9080"
	cl.warm(t, target)

	t.Run("the client follows the VirtualService", func(t *testing.T) {
		cl.until(t, target, 20, 10*time.Second, "reviews-v2")
		if err := putVS(c, reviewsVS("v1")); err != nil {
			t.Fatal(err)
		}
		took := cl.until(t, target, 20, 10*time.Second, "reviews-v1")
		t.Logf("VirtualService change reached the client in %s", took.Round(time.Millisecond))
	})

	t.Run("registry shows pod labels and identity", func(t *testing.T) {
		m.waitRegistry(t, "reviews from kubernetes", func(r registryz) bool {
			for _, s := range r.Services {
				if s.Hostname == "reviews.shop.svc.cluster.local" && s.Source == "kubernetes" && len(s.Endpoints) == 2 {
					return true
				}
			}
			return false
		})
		_, body := m.get(t, "/debug/registryz")
		for _, want := range []string{`"version": "v1"`, "spiffe://cluster.local/ns/shop/sa/reviews"} {
			if !strings.Contains(body, want) {
				t.Errorf("registryz lacks %s:\n%s", want, body)
			}
		}
	})

	t.Run("the webhook refuses an invalid VirtualService", func(t *testing.T) {
		hook := &admregv1.ValidatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "meshd-validator"},
			Webhooks: []admregv1.ValidatingWebhook{{
				Name:                    "validation.meshd.io",
				ClientConfig:            admregv1.WebhookClientConfig{URL: ptr.To("https://" + m.kubesrc.WebhookAddr().String() + kubesource.WebhookPath), CABundle: c.CAPEM},
				Rules:                   []admregv1.RuleWithOperations{{Operations: []admregv1.OperationType{admregv1.Create, admregv1.Update}, Rule: admregv1.Rule{APIGroups: []string{"networking.istio.io", "security.istio.io"}, APIVersions: []string{"*"}, Resources: []string{"*"}}}},
				FailurePolicy:           ptr.To(admregv1.Fail),
				SideEffects:             ptr.To(admregv1.SideEffectClassNone),
				AdmissionReviewVersions: []string{"v1"},
			}},
		}
		if _, err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(context.Background(), hook, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			// Until the API server loads the webhook the update goes in;
			// put the valid one back each time.
			if err = putVS(c, invalidReviewsVS); err != nil || time.Now().After(deadline) {
				break
			}
			_ = putVS(c, reviewsVS("v1"))
			time.Sleep(100 * time.Millisecond)
		}
		if err == nil || !strings.Contains(err.Error(), "spec.http[0].timeout") || !strings.Contains(err.Error(), "70000") {
			t.Fatalf("invalid VirtualService not refused with its findings: %v", err)
		}
		t.Logf("refused: %v", err)
		cl.until(t, target, 20, 10*time.Second, "reviews-v1")
	})

	t.Run("with the webhook off, status reports the findings and v1 keeps serving", func(t *testing.T) {
		if err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), "meshd-validator", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := putVS(c, invalidReviewsVS)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("invalid update still refused without the webhook: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		var status map[string]any
		deadline = time.Now().Add(15 * time.Second)
		for {
			u, err := c.Dynamic.Resource(vsGVR).Namespace("shop").Get(context.Background(), "reviews", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			status, _, _ = unstructured.NestedMap(u.Object, "status")
			conds, _ := status["conditions"].([]any)
			if len(conds) == 1 && conds[0].(map[string]any)["status"] == "False" && status["observedGeneration"] == u.GetGeneration() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("status never reported the rejection: %v", status)
			}
			time.Sleep(100 * time.Millisecond)
		}
		msgs, _ := yaml.Marshal(status["validationMessages"])
		for _, want := range []string{"level: ERROR", "timeout", "70000"} {
			if !strings.Contains(string(msgs), want) {
				t.Errorf("validationMessages lack %q:\n%s", want, msgs)
			}
		}
		t.Logf("status.validationMessages:\n%s", msgs)
		// The rejected update is not served: v1 still takes everything.
		r := cl.run(batch{Target: target, N: 50})
		if r.Backends["reviews-v1"] != 50 {
			t.Fatalf("after the rejected update: %v %v (%s), want all 50 on reviews-v1", r.Backends, r.Codes, r.FirstErr)
		}
		// Fixing the object is accepted again and serves.
		if err := putVS(c, reviewsVS("v2")); err != nil {
			t.Fatal(err)
		}
		cl.until(t, target, 20, 10*time.Second, "reviews-v2")
	})

	t.Run("service-account tokens buy certificates for their own identity only", func(t *testing.T) {
		const reviewsID = "spiffe://cluster.local/ns/shop/sa/reviews"
		ask := func(token, id string) (*pb.IstioCertificateResponse, error) { return askCert(t, m, token, id) }
		pemRoots, _ := m.citadel.TrustBundle()
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pemRoots)

		resp, err := ask(c.Token("shop", "reviews", "istio-ca"), reviewsID)
		if err != nil {
			t.Fatalf("reviews' own token was refused: %v", err)
		}
		block, _ := pem.Decode([]byte(resp.CertChain[0]))
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != reviewsID {
			t.Fatalf("certificate identity %v, want %s", leaf.URIs, reviewsID)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("certificate does not chain to the trust bundle: %v", err)
		}

		if _, err := ask(c.Token("shop", "ratings", "istio-ca"), reviewsID); err == nil {
			t.Fatal("a token of ratings bought a certificate for reviews")
		} else {
			t.Logf("ratings' token for reviews: %v", err)
		}
		if _, err := ask(c.Token("shop", "reviews", "some-other-audience"), reviewsID); err == nil {
			t.Fatal("a token for another audience was accepted")
		}
		if _, err := ask("not.a.token", reviewsID); err == nil {
			t.Fatal("a forged token was accepted")
		}
	})
}

// askCert sends a CSR for id to meshd's CA with token as the bearer
// credential, as Istio's agent does.
func askCert(t *testing.T, m *meshd, token, id string) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	pemRoots, _ := m.citadel.TrustBundle()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemRoots)
	conn, err := grpc.NewClient(m.xds.TLSAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token), 10*time.Second)
	defer cancel()
	return pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: string(csrFor(t, id)), ValidityDuration: 3600})
}

// csrFor makes a PEM CSR for a SPIFFE identity.
func csrFor(t *testing.T, id string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
