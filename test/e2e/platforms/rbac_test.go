package platforms

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testservers"
	"github.com/meshd/meshd/internal/testservers/kubetest"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestShippedRBAC applies deploy/kubernetes's namespace, service account
// and RBAC to a real API server, then runs every Kubernetes module of meshd
// as that service account: discovery, CRD config with status writes, and
// TokenReview all work, and the role grants nothing beyond them.
func TestShippedRBAC(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real kube-apiserver")
	}
	c := kubetest.Start(t)
	c.InstallCRDs()
	deploy := filepath.Join(testservers.RepoRoot(), "deploy", "kubernetes")
	c.ApplyFiles(filepath.Join(deploy, "namespace.yaml"), filepath.Join(deploy, "serviceaccount.yaml"), filepath.Join(deploy, "rbac.yaml"))
	c.Namespace("shop")
	c.ServiceAccount("shop", "reviews")
	kubeService(t, c, "shop", "reviews", 9080)
	if err := putVS(c, invalidReviewsVS); err != nil { // no webhook here: stored
		t.Fatal(err)
	}

	// meshd's own token, as the kubelet would mount it (the API server's
	// default audience).
	kubeconfig := c.KubeconfigFor(t, "meshd", c.Token("meshd-system", "meshd"))
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	asMeshd, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("what meshd may and may not do", func(t *testing.T) {
		for _, tc := range []struct {
			attrs authzv1.ResourceAttributes
			want  bool
		}{
			{authzv1.ResourceAttributes{Verb: "watch", Resource: "endpointslices", Group: "discovery.k8s.io"}, true},
			{authzv1.ResourceAttributes{Verb: "list", Resource: "pods"}, true},
			{authzv1.ResourceAttributes{Verb: "list", Resource: "nodes"}, true},
			{authzv1.ResourceAttributes{Verb: "patch", Resource: "virtualservices", Subresource: "status", Group: "networking.istio.io", Namespace: "shop"}, true},
			{authzv1.ResourceAttributes{Verb: "create", Resource: "tokenreviews", Group: "authentication.k8s.io"}, true},
			{authzv1.ResourceAttributes{Verb: "update", Resource: "virtualservices", Group: "networking.istio.io", Namespace: "shop"}, false},
			{authzv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "shop"}, false},
			{authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Namespace: "shop"}, false},
			{authzv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts/token", Namespace: "shop"}, false},
		} {
			ssar, err := asMeshd.AuthorizationV1().SelfSubjectAccessReviews().Create(context.Background(),
				&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &tc.attrs}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if ssar.Status.Allowed != tc.want {
				t.Errorf("%s %s/%s %s: allowed=%v, want %v", tc.attrs.Verb, tc.attrs.Group, tc.attrs.Resource, tc.attrs.Subresource, ssar.Status.Allowed, tc.want)
			}
		}
		if _, err := asMeshd.CoreV1().Secrets("shop").List(context.Background(), metav1.ListOptions{}); err == nil {
			t.Error("meshd's service account can list secrets")
		}
	})

	t.Run("every Kubernetes module runs as meshd's service account", func(t *testing.T) {
		m := startMeshd(t, options{Kubeconfig: kubeconfig})
		m.waitRegistry(t, "reviews from kubernetes", func(r registryz) bool {
			for _, s := range r.Services {
				if s.Hostname == "reviews.shop.svc.cluster.local" {
					return true
				}
			}
			return false
		})
		// Status written with the status-only permission.
		deadline := time.Now().Add(15 * time.Second)
		for {
			u, err := c.Dynamic.Resource(vsGVR).Namespace("shop").Get(context.Background(), "reviews", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := u.Object["status"]; ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no status written as meshd's service account")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// TokenReview works with the role: a workload token buys a
		// certificate.
		if _, err := askCert(t, m, c.Token("shop", "reviews", "istio-ca"), "spiffe://cluster.local/ns/shop/sa/reviews"); err != nil {
			t.Fatalf("CSR with a workload token, meshd running as its service account: %v", err)
		}
	})
}
