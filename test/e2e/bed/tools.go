package bed

import (
	"context"
	"path/filepath"
)

// Tools are the paths of the built component binaries.
type Tools struct {
	Gateway, QueueWorker, NATSServer, StreamingServer string
}

// toolPackages are the main packages pinned by the tool directives of the
// tools module (test/tools/go.mod); buildTools returns their binaries by
// the names goBuild gives them.
var toolPackages = []string{
	"github.com/openfaas/faas/gateway",
	"github.com/openfaas/nats-queue-worker",
	"github.com/nats-io/nats-server/v2",
	"github.com/nats-io/nats-streaming-server",
}

// buildTools builds them from the tools module in toolsDir into outDir.
//
// The binaries come from source through the Go module proxy at the versions
// pinned in toolsDir's go.mod, so the test bed runs the real OpenFaaS CE
// gateway and queue-worker and the real NATS servers without containers.
// All four are built by one go invocation so that a repeat build is served
// from the build cache in a second or so.
func buildTools(ctx context.Context, toolsDir, outDir string) (Tools, error) {
	outDir, err := filepath.Abs(outDir)
	if err != nil {
		return Tools{}, err
	}
	if err := goBuild(ctx, toolsDir, outDir, toolPackages...); err != nil {
		return Tools{}, err
	}
	return Tools{
		Gateway:         filepath.Join(outDir, "gateway"),
		QueueWorker:     filepath.Join(outDir, "nats-queue-worker"),
		NATSServer:      filepath.Join(outDir, "nats-server"),
		StreamingServer: filepath.Join(outDir, "nats-streaming-server"),
	}, nil
}
