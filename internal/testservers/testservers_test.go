package testservers

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestVersionsMatchBuildScript keeps the versions tests look for in the
// cache in step with what test/tools/build.sh builds and the tools modules
// pin.
func TestVersionsMatchBuildScript(t *testing.T) {
	tools := filepath.Join(RepoRoot(), "test", "tools")
	script, err := os.ReadFile(filepath.Join(tools, "build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"KUBE_VERSION": KubeVersion, "ETCD_VERSION": EtcdVersion, "CONSUL_VERSION": ConsulVersion} {
		m := regexp.MustCompile(`(?m)^` + name + `=(\S+)$`).FindSubmatch(script)
		if m == nil || string(m[1]) != want {
			t.Errorf("build.sh %s = %q, testservers wants %s", name, m, want)
		}
	}
	modules := map[string][]string{
		filepath.Join("kube", "go.mod"):         {"k8s.io/kubernetes " + KubeVersion},
		filepath.Join("kube", "etcd", "go.mod"): {"go.etcd.io/etcd/server/v3 " + EtcdVersion},
		filepath.Join("consul", "go.mod"):       {"github.com/hashicorp/consul " + ConsulVersion},
	}
	for file, wants := range modules {
		b, err := os.ReadFile(filepath.Join(tools, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s does not require %s", file, w)
			}
		}
	}
	// Every staging module is replaced with the release matching the
	// kube-apiserver version (v1.36.3 -> v0.36.3).
	b, _ := os.ReadFile(filepath.Join(tools, "kube", "go.mod"))
	staging := "v0." + strings.TrimPrefix(KubeVersion, "v1.")
	for _, m := range regexp.MustCompile(`k8s\.io/(\S+) => k8s\.io/(\S+) (\S+)`).FindAllStringSubmatch(string(b), -1) {
		if m[1] != m[2] || m[3] != staging {
			t.Errorf("replace k8s.io/%s => k8s.io/%s %s, want the same module at %s", m[1], m[2], m[3], staging)
		}
	}
}

func TestRequireSkipsOrFails(t *testing.T) {
	tool := Tool{Name: "nothing-here", Version: "v0", Env: "MESHD_TEST_NOTHING_HERE"}
	t.Setenv("MESHD_TOOLS_CACHE", t.TempDir())
	if _, ok := tool.Path(); ok {
		t.Fatal("found a tool that does not exist")
	}
	t.Setenv(tool.Env, "/bin/sh")
	if p, ok := tool.Path(); !ok || p != "/bin/sh" {
		t.Fatalf("env override: %s %v", p, ok)
	}
}
