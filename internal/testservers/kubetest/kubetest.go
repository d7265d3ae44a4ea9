// Package kubetest has client-go helpers for tests against the real API
// server of testservers.StartKube: clients, applying manifests, installing
// meshd's CRDs, service accounts and tokens. It is separate from
// testservers so the Consul tests do not compile client-go.
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testservers"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a started API server with admin clients.
type Cluster struct {
	*testservers.KubeAPI
	Rest    *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	t       testing.TB
}

// Start starts etcd and kube-apiserver and returns admin clients.
func Start(t testing.TB) *Cluster {
	t.Helper()
	k := testservers.StartKube(t)
	rc, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{KubeAPI: k, Rest: rc, t: t}
	if c.Client, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	return c
}

// Namespace creates a namespace and its default service account (there is
// no controller manager to do it).
func (c *Cluster) Namespace(name string) {
	c.t.Helper()
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
	c.ServiceAccount(name, "default")
}

// ServiceAccount creates a service account.
func (c *Cluster) ServiceAccount(ns, name string) {
	c.t.Helper()
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Fatal(err)
	}
}

// Token asks the API server for a token of a service account with the
// given audiences (TokenRequest), as the kubelet does for projected tokens.
func (c *Cluster) Token(ns, sa string, audiences ...string) string {
	c.t.Helper()
	exp := int64(3600)
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return tr.Status.Token
}

// ApplyFiles creates every object in the YAML files (multi-document),
// resolving kinds through discovery. Objects that exist are updated.
func (c *Cluster) ApplyFiles(paths ...string) {
	c.t.Helper()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			c.t.Fatal(err)
		}
		if err := c.Apply(b); err != nil {
			c.t.Fatalf("%s: %v", p, err)
		}
	}
}

// Apply creates or updates the objects of a YAML stream.
func (c *Cluster) Apply(yamlDocs []byte) error {
	disc, err := discovery.NewDiscoveryClientForConfig(c.Rest)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(yamlDocs), 4096)
	ctx := context.Background()
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s: %w", gvk, err)
		}
		var ri dynamic.ResourceInterface = c.Dynamic.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := u.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			ri = c.Dynamic.Resource(m.Resource).Namespace(ns)
		}
		// Strict, as kubectl apply validates: an unknown or duplicate
		// field is an error, not a warning.
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			if !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create %s %s: %w", gvk.Kind, u.GetName(), err)
			}
			cur, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			u.SetResourceVersion(cur.GetResourceVersion())
			if _, err := ri.Update(ctx, u, metav1.UpdateOptions{FieldValidation: "Strict"}); err != nil {
				return fmt.Errorf("update %s %s: %w", gvk.Kind, u.GetName(), err)
			}
		}
	}
}

// InstallCRDs applies deploy/kubernetes/crds and waits until every CRD is
// established and served.
func (c *Cluster) InstallCRDs() {
	c.t.Helper()
	files, err := filepath.Glob(filepath.Join(testservers.RepoRoot(), "deploy", "kubernetes", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		c.t.Fatalf("no CRD manifests found: %v", err)
	}
	c.ApplyFiles(files...)
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	deadline := time.Now().Add(30 * time.Second)
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		for {
			u, err := c.Dynamic.Resource(crds).Get(context.Background(), name, metav1.GetOptions{})
			if err == nil && established(u) {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("CRD %s not established: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Discovery lags establishment a little.
	disc, _ := discovery.NewDiscoveryClientForConfig(c.Rest)
	for {
		l, err := disc.ServerResourcesForGroupVersion("security.istio.io/v1")
		n, err2 := disc.ServerResourcesForGroupVersion("networking.istio.io/v1")
		if err == nil && err2 == nil && len(l.APIResources) >= 3 && len(n.APIResources) >= 7 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("Istio CRDs not in discovery: %v %v", err, err2)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
