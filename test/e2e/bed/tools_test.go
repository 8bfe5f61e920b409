package bed

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildTools(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four binaries from source")
	}
	// No deadline of its own: compiling four servers with empty caches takes
	// as long as the machine needs.
	tools, err := buildTools(t.Context(), filepath.Join("..", "..", "tools"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"gateway":               tools.Gateway,
		"nats-queue-worker":     tools.QueueWorker,
		"nats-server":           tools.NATSServer,
		"nats-streaming-server": tools.StreamingServer,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			t.Fatalf("%s: %s is not an executable file (mode %v)", name, path, fi.Mode())
		}
	}

	for _, c := range []struct{ bin, want string }{
		{tools.NATSServer, "nats-server: v2.15.2"},
		{tools.StreamingServer, "nats-streaming-server version 0.25.6"},
	} {
		out, err := exec.CommandContext(t.Context(), c.bin, "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", c.bin, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Fatalf("%s --version printed %q, want it to contain %q", c.bin, out, c.want)
		}
	}
}

func TestBuildToolsError(t *testing.T) {
	// A directory with no go.mod fails fast and the error carries go's output.
	_, err := buildTools(t.Context(), t.TempDir(), t.TempDir())
	if err == nil {
		t.Fatal("want an error outside the tools module")
	}
	if !strings.Contains(err.Error(), "go.mod") {
		t.Fatalf("error does not carry go's output: %v", err)
	}
}
