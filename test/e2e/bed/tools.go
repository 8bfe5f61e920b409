package bed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Tools are the paths of the built component binaries.
type Tools struct {
	Gateway, QueueWorker, NATSServer, StreamingServer string
}

// toolPackages are the main packages pinned by the tool directives of the
// tools module (test/tools/go.mod). The order matches the binary names below:
// go build names each binary after the last element of its import path,
// dropping a major-version suffix such as /v2.
var toolPackages = []string{
	"github.com/openfaas/faas/gateway",
	"github.com/openfaas/nats-queue-worker",
	"github.com/nats-io/nats-server/v2",
	"github.com/nats-io/nats-streaming-server",
}

// BuildTools builds them with the go command from the tools module in toolsDir into outDir.
//
// The binaries come from source through the Go module proxy at the versions
// pinned in toolsDir's go.mod, so the test bed runs the real OpenFaaS CE
// gateway and queue-worker and the real NATS servers without containers.
// All four are built by one go invocation so that a repeat build is served
// from the build cache in a second or so.
func BuildTools(ctx context.Context, toolsDir, outDir string) (Tools, error) {
	outDir, err := filepath.Abs(outDir)
	if err != nil {
		return Tools{}, err
	}
	// A trailing separator makes go build treat -o as a directory (created
	// if missing) whatever the number of packages.
	args := append([]string{"build", "-o", outDir + string(filepath.Separator)}, toolPackages...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = toolsDir
	// The tools module stands alone: a go.work above it must not pull it
	// into a workspace whose dependency versions differ.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Tools{}, fmt.Errorf("building tools in %s: go %v: %w\n%s", toolsDir, args, err, out)
	}
	return Tools{
		Gateway:         filepath.Join(outDir, "gateway"),
		QueueWorker:     filepath.Join(outDir, "nats-queue-worker"),
		NATSServer:      filepath.Join(outDir, "nats-server"),
		StreamingServer: filepath.Join(outDir, "nats-streaming-server"),
	}, nil
}
