package bed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/openfaas/mailbox/test/internal/fnbuild"
)

// Binaries are the programs the bed runs.
type Binaries struct {
	Tools
	// Connector is the repository's connector.
	Connector string
	// Serve is the repository's standalone binary (cmd/mailbox), run as
	// mailbox serve.
	Serve string
	// Stack is the stack file the functions were built from.
	Stack string
	// Functions maps a stack file function (Mailbox, RateLimited) to its
	// binary, built through the template as faas-cli builds the image.
	Functions map[string]string
	// TestFn is the test functions' binary.
	TestFn string
	// Provider is the bed's faas-provider.
	Provider string
}

// build builds every binary into outDir, which must be outside the
// repository. It needs the Go module proxy, so it runs before the bed
// moves into its own network namespace. root is the repository.
func build(ctx context.Context, root, outDir string) (Binaries, error) {
	bin := Binaries{
		Connector: filepath.Join(outDir, "connector"),
		Serve:     filepath.Join(outDir, "mailbox"),
		Stack:     filepath.Join(root, "stack.yml"),
		TestFn:    filepath.Join(outDir, "testfn"),
		Provider:  filepath.Join(outDir, "provider"),
	}
	var err error
	if bin.Tools, err = buildTools(ctx, filepath.Join(root, "test", "tools"), filepath.Join(outDir, "tools")); err != nil {
		return bin, err
	}
	if err := goBuild(ctx, root, outDir, "./connector", "./cmd/mailbox"); err != nil {
		return bin, err
	}
	if err := goBuild(ctx, filepath.Join(root, "test"), outDir, "./e2e/cmd/testfn", "./e2e/cmd/provider"); err != nil {
		return bin, err
	}
	fns, err := fnbuild.Build(bin.Stack, []string{Mailbox, RateLimited}, filepath.Join(outDir, "functions"))
	if err != nil {
		return bin, err
	}
	bin.Functions = map[string]string{}
	for _, fn := range fns {
		bin.Functions[fn.Name] = fn.Binary
	}
	return bin, nil
}

// goBuild builds the main packages pkgs of the module in dir into outDir,
// each binary named after the last element of its import path, without a
// major-version suffix such as /v2.
func goBuild(ctx context.Context, dir, outDir string, pkgs ...string) error {
	// A trailing separator makes go build treat -o as a directory (created
	// if missing) whatever the number of packages.
	args := append([]string{"build", "-o", outDir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	// Each module builds as it stands alone: a go.work above it must not
	// pull it into a workspace whose dependency versions differ.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v in %s: %w\n%s", args, dir, err, out)
	}
	return nil
}
