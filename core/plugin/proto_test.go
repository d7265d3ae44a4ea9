package plugin

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProtoGenerated checks that the committed Go code of the plugin
// protocol is what the .proto files generate. It needs protoc and its Go
// plugins, which CI does not have; without them it skips.
func TestProtoGenerated(t *testing.T) {
	for _, tool := range []string{"protoc", "protoc-gen-go", "protoc-gen-go-grpc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	protos, err := filepath.Glob("proto/*/v1/*.proto")
	if err != nil || len(protos) == 0 {
		t.Fatalf("no .proto files: %v", err)
	}
	out := t.TempDir()
	args := []string{"-I", "proto", "--go_out=paths=source_relative:" + out, "--go-grpc_out=paths=source_relative:" + out}
	for _, p := range protos {
		args = append(args, strings.TrimPrefix(p, "proto/"))
	}
	if b, err := exec.Command("protoc", args...).CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, b)
	}
	gen, _ := filepath.Glob(filepath.Join(out, "*/v1/*.go"))
	if len(gen) != 2*len(protos) {
		t.Fatalf("protoc made %d files for %d protos", len(gen), len(protos))
	}
	for _, g := range gen {
		rel, _ := filepath.Rel(out, g)
		want, _ := os.ReadFile(g)
		got, err := os.ReadFile(filepath.Join("proto", rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("proto/%s is out of date: regenerate it (docs/plugins.md, Protocol reference)", rel)
		}
	}
}
