package examples_test

import (
	"os"
	"strings"
	"testing"

	"github.com/meshd/meshd/test/e2e"
)

// TestValidateBinary runs `meshd validate` from the built binary on both
// bookstore examples: the clean one exits 0, the broken one exits 1 with
// exactly the findings in bookstore-broken/expected.txt.
func TestValidateBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the meshd binary")
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out, code := e2e.Run(t, dir, nil, "validate", "bookstore")
	if code != 0 || out != "27 objects in 6 files: no problems found\n" {
		t.Fatalf("meshd validate bookstore: exit %d\n%s", code, out)
	}

	out, code = e2e.Run(t, dir, nil, "validate", "bookstore-broken")
	if code != 1 {
		t.Fatalf("meshd validate bookstore-broken: exit %d, want 1\n%s", code, out)
	}
	want, err := os.ReadFile("bookstore-broken/expected.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, string(want)) {
		t.Fatalf("findings differ from bookstore-broken/expected.txt:\n%s", out)
	}

	out, code = e2e.Run(t, dir, nil, "validate", "-o", "json", "--strict", "bookstore")
	if code != 0 || !strings.Contains(out, `"errors": 0`) {
		t.Fatalf("meshd validate -o json --strict bookstore: exit %d\n%s", code, out)
	}
}
