package agent

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	galleyapi "github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
)

var update = flag.Bool("update", false, "rewrite the agent.yaml reference in docs/vm-onboarding.md")

func onboardingDoc(t *testing.T) (string, string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "docs", "vm-onboarding.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, string(b)
}

// TestOnboardingDocReference keeps the agent.yaml table in
// docs/vm-onboarding.md in step with the code.
func TestOnboardingDocReference(t *testing.T) {
	path, doc := onboardingDoc(t)
	const begin, end = "<!-- agent-config:begin -->\n", "<!-- agent-config:end -->"
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatal("markers not found")
	}
	want := doc[:i+len(begin)] + configReference() + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("docs/vm-onboarding.md's agent.yaml reference is out of date; run: go test ./agent -run TestOnboardingDocReference -update")
}

// TestOnboardingDocExamples: the guide's agent.yaml loads, and its mesh
// config decodes without errors.
func TestOnboardingDocExamples(t *testing.T) {
	_, doc := onboardingDoc(t)
	block := func(marker string) string {
		m := regexp.MustCompile("(?s)<!-- example: " + regexp.QuoteMeta(marker) + " -->\n```yaml\n(.*?)```").FindStringSubmatch(doc)
		if m == nil {
			t.Fatalf("example %s not found", marker)
		}
		return m[1]
	}
	if _, err := loadString(t, block("agent.yaml")); err != nil {
		t.Errorf("agent.yaml example: %v", err)
	}
	r := decode.Decode("billing.yaml", []byte(block("mesh")))
	for _, f := range r.Findings {
		if f.Severity == galleyapi.SeverityError {
			t.Errorf("mesh example: %v", f)
		}
	}
	if len(r.Objects) != 3 {
		t.Errorf("mesh example: %d objects", len(r.Objects))
	}
}
