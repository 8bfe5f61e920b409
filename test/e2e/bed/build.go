package bed

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"

	"github.com/openfaas/mailbox/test/internal/fnbuild"
)

// Binaries are the programs the bed runs.
type Binaries struct {
	Tools
	// Connector is the repository's connector.
	Connector string
	// Functions maps a stack.yml function (Mailbox, RateLimited) to its
	// binary, built through the template as faas-cli builds the image.
	Functions map[string]string
	// TestFn is the test functions' binary.
	TestFn string
	// Provider is the bed's faas-provider.
	Provider string
}

// Build builds every binary into outDir, which must be outside the
// repository. It needs the Go module proxy, so it runs before the bed
// moves into its own network namespace. root is the repository.
func Build(ctx context.Context, root, outDir string) (Binaries, error) {
	var bin Binaries
	var err error
	if bin.Tools, err = BuildTools(ctx, filepath.Join(root, "test", "tools"), filepath.Join(outDir, "tools")); err != nil {
		return bin, err
	}
	bin.Connector = filepath.Join(outDir, "connector")
	if err := goBuild(ctx, root, outDir, "./connector"); err != nil {
		return bin, err
	}
	bin.TestFn = filepath.Join(outDir, "testfn")
	bin.Provider = filepath.Join(outDir, "provider")
	if err := goBuild(ctx, filepath.Join(root, "test"), outDir, "./e2e/cmd/testfn", "./e2e/cmd/provider"); err != nil {
		return bin, err
	}
	fns, err := fnbuild.Build(filepath.Join(root, "stack.yml"), []string{Mailbox, RateLimited}, filepath.Join(outDir, "functions"))
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
// each named after the last element of its path.
func goBuild(ctx context.Context, dir, outDir string, pkgs ...string) error {
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", outDir + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", pkgs, err, b)
	}
	return nil
}
