package platforms

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/testservers"
	"github.com/meshd/meshd/internal/testservers/kubetest"
)

// TestShippedManifests applies everything deploy/kubernetes/kustomization.yaml
// lists, in its order, to a real API server, which validates each object as
// `kubectl apply -k` would have it validated: a typo in the Deployment or a
// missing file fails here, not in a user's cluster. It also checks that the
// store is on the PersistentVolumeClaim, so a restarted pod keeps its CA.
func TestShippedManifests(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real kube-apiserver")
	}
	deploy := filepath.Join(testservers.RepoRoot(), "deploy", "kubernetes")
	b, err := os.ReadFile(filepath.Join(deploy, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	if len(k.Resources) < 10 {
		t.Fatalf("kustomization lists %d resources", len(k.Resources))
	}
	listed := map[string]bool{}
	var paths []string
	for _, r := range k.Resources {
		listed[r] = true
		paths = append(paths, filepath.Join(deploy, r))
	}
	// Every manifest in the folder is listed, so none is shipped unused.
	files, _ := filepath.Glob(filepath.Join(deploy, "*.yaml"))
	crds, _ := filepath.Glob(filepath.Join(deploy, "crds", "*.yaml"))
	for _, f := range append(files, crds...) {
		rel, _ := filepath.Rel(deploy, f)
		if rel != "kustomization.yaml" && !listed[rel] {
			t.Errorf("%s is not in kustomization.yaml", rel)
		}
	}

	c := kubetest.Start(t)
	c.ApplyFiles(paths...)

	ctx := context.Background()
	d, err := c.Client.AppsV1().Deployments("meshd-system").Get(ctx, "meshd", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]string{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			claims[v.Name] = v.PersistentVolumeClaim.ClaimName
		}
	}
	if claims["data"] != "meshd-data" {
		t.Fatalf("the data volume is not the meshd-data claim: %v", claims)
	}
	if _, err := c.Client.CoreV1().PersistentVolumeClaims("meshd-system").Get(ctx, "meshd-data", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
}
