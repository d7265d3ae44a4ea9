package kubesource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testservers/kubetest"
	"github.com/meshd/meshd/modules/galley/api"
	admregv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// recSink records what the source reports.
type recSink struct {
	mu      sync.Mutex
	latest  map[string]api.Update
	updates int
	synced  int
	ch      chan struct{}
}

func newRecSink() *recSink {
	return &recSink{latest: map[string]api.Update{}, ch: make(chan struct{}, 1)}
}

func (s *recSink) Update(us ...api.Update) {
	s.mu.Lock()
	for _, u := range us {
		s.latest[u.Origin] = u
		s.updates++
	}
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *recSink) Synced() {
	s.mu.Lock()
	s.synced++
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *recSink) get(origin string) (api.Update, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.latest[origin]
	return u, ok
}

func (s *recSink) count() (updates, synced int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updates, s.synced
}

func (s *recSink) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-s.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

var vsGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}

func vsObject(t *testing.T, name, body string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetName(name)
	return u
}

const goodSpec = `
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
`

const badSpec = `
apiVersion: networking.istio.io/v1
kind: VirtualService
spec:
  hosts: [reviews]
  http:
  - timeout: -1s
    route:
    - destination: {host: reviews, port: {number: 70000}}
`

// TestRealAPIServer installs the CRDs in a real API server, registers the
// webhook, and runs the source and the status writer against it.
func TestRealAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	c.InstallCRDs()
	c.Namespace("shop")
	ctx := context.Background()
	vs := c.Dynamic.Resource(vsGVR).Namespace("shop")

	// The webhook, served over TLS with a certificate from the cluster's CA.
	certPEM, keyPEM := c.IssueCert(t, "meshd-webhook", nil, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST "+WebhookPath, NewWebhook(nil))
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	hook := &admregv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "meshd-test"},
		Webhooks: []admregv1.ValidatingWebhook{{
			Name:                    "validation.meshd.io",
			ClientConfig:            admregv1.WebhookClientConfig{URL: ptr.To(srv.URL + WebhookPath), CABundle: c.CAPEM},
			Rules:                   []admregv1.RuleWithOperations{{Operations: []admregv1.OperationType{admregv1.Create, admregv1.Update}, Rule: admregv1.Rule{APIGroups: []string{"networking.istio.io", "security.istio.io"}, APIVersions: []string{"*"}, Resources: []string{"*"}}}},
			FailurePolicy:           ptr.To(admregv1.Fail),
			SideEffects:             ptr.To(admregv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To(int32(5)),
		}},
	}
	if _, err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, hook, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server picks webhook configurations up asynchronously.
	var denial error
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, denial = vs.Create(ctx, vsObject(t, "probe", badSpec), metav1.CreateOptions{})
		if denial != nil || time.Now().After(deadline) {
			break
		}
		_ = vs.Delete(ctx, "probe", metav1.DeleteOptions{})
		time.Sleep(100 * time.Millisecond)
	}
	if denial == nil || !strings.Contains(denial.Error(), "spec.http[0].timeout") || !strings.Contains(denial.Error(), "70000") {
		t.Fatalf("invalid VirtualService not refused by the webhook with its findings: %v", denial)
	}
	// Written as v1beta1; the source reads it back as v1.
	v1beta1 := vsGVR
	v1beta1.Version = "v1beta1"
	if _, err := c.Dynamic.Resource(v1beta1).Namespace("shop").Create(ctx, vsObject(t, "good", goodSpec), metav1.CreateOptions{}); err != nil {
		t.Fatalf("valid VirtualService refused: %v", err)
	}

	// With the webhook gone, the invalid object is stored; galley's
	// verdict goes to its status instead.
	if err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, "meshd-test", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err = vs.Create(ctx, vsObject(t, "bad", badSpec), metav1.CreateOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("invalid VirtualService still refused without the webhook: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	disc, err := discovery.NewDiscoveryClientForConfig(c.Rest)
	if err != nil {
		t.Fatal(err)
	}
	src, err := New(Default(), c.Dynamic, disc, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink := newRecSink()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(rctx, sink) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	goodOrigin, badOrigin := Origin("VirtualService", "shop", "good"), Origin("VirtualService", "shop", "bad")
	sink.waitFor(t, "both objects and Synced", func() bool {
		_, g := sink.get(goodOrigin)
		_, b := sink.get(badOrigin)
		_, synced := sink.count()
		return g && b && synced == 1
	})
	good, _ := sink.get(goodOrigin)
	if len(good.Objects) != 1 || len(good.Findings) != 0 || good.Objects[0].Key() != "VirtualService/shop/good" {
		t.Fatalf("good update = %+v", good)
	}
	if good.Objects[0].APIVersion != "networking.istio.io/v1" {
		t.Errorf("apiVersion = %s, want v1 (read through the v1 informer)", good.Objects[0].APIVersion)
	}
	bad, _ := sink.get(badOrigin)
	if len(bad.Objects) != 1 {
		t.Fatalf("bad update = %+v (decodes; validation is galley's)", bad)
	}

	// Galley's verdicts, as the module would read them from configz.
	verdicts := func() map[string]Verdict {
		f := []api.Finding{{Code: api.CodePort, Severity: api.SeverityError, Object: "VirtualService/shop/bad", Field: "spec.http[0].route[0].destination.port.number", Message: "port 70000 is out of range"}}
		return map[string]Verdict{goodOrigin: {Accepted: true}, badOrigin: {Accepted: false, Findings: f}}
	}
	w := NewStatusWriter(src, c.Dynamic, verdicts, nil)
	w.Debounce = 10 * time.Millisecond
	kick := make(chan struct{}, 1)
	kick <- struct{}{}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { w.Run(wctx, kick); close(wdone) }()
	defer func() { wcancel(); <-wdone }()

	waitStatus := func(name, want string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			u, err := vs.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			if len(conds) == 1 && conds[0].(map[string]any)["status"] == want {
				st, _, _ := unstructured.NestedMap(u.Object, "status")
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status not written: %v", name, u.Object["status"])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitStatus("good", "True")
	st := waitStatus("bad", "False")
	msgs, _ := st["validationMessages"].([]any)
	if len(msgs) != 1 {
		t.Fatalf("validationMessages = %v", st["validationMessages"])
	}
	m := msgs[0].(map[string]any)
	if m["level"] != "ERROR" || m["type"].(map[string]any)["code"] != string(api.CodePort) || !strings.Contains(m["description"].(string), "70000") {
		t.Errorf("message = %v", m)
	}
	if st["observedGeneration"] != int64(1) {
		t.Errorf("observedGeneration = %v", st["observedGeneration"])
	}

	// The status writes came back through the informers; none of them is
	// reported to galley as a change.
	before, _ := sink.count()
	time.Sleep(500 * time.Millisecond)
	if after, _ := sink.count(); after != before {
		t.Fatalf("status writes were reported as config changes (%d -> %d)", before, after)
	}

	// A spec change is reported; a deletion is reported as removed.
	// meshd may still be writing this object's status, so retry on
	// conflict as kubectl would.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := vs.Get(ctx, "good", metav1.GetOptions{})
		if err != nil {
			return err
		}
		_ = unstructured.SetNestedStringSlice(u.Object, []string{"reviews", "reviews.shop.svc.cluster.local"}, "spec", "hosts")
		_, err = vs.Update(ctx, u, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "updated hosts", func() bool {
		g, _ := sink.get(goodOrigin)
		return len(g.Objects) == 1 && strings.Contains(string(mustYAML(t, g.Objects[0].Spec)), "reviews.shop.svc.cluster.local")
	})
	if err := vs.Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitFor(t, "removal", func() bool {
		b, _ := sink.get(badOrigin)
		return b.Removed
	})
}

func mustYAML(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
