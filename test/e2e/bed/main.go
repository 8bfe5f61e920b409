package bed

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// envBinaries passes the built binaries to the process in the namespace.
const envBinaries = "MAILBOX_BED_BINARIES"

// Main is the main of the bed's programs (the e2e tests' TestMain and the
// bed command). Outside the bed's namespaces it builds every binary, which
// needs the Go module proxy, then runs this program again in namespaces
// of its own and returns its exit code. Inside, it returns body's exit
// code. root is the repository.
func Main(ctx context.Context, root string, body func(Binaries) int) int {
	if isNamespaceInit() {
		return namespaceInit()
	}
	if isBed() {
		var bin Binaries
		if err := json.Unmarshal([]byte(os.Getenv(envBinaries)), &bin); err != nil {
			fmt.Fprintln(os.Stderr, "bed:", envBinaries+":", err)
			return 1
		}
		return body(bin)
	}
	code, err := buildAndEnter(ctx, root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bed:", err)
		return 1
	}
	return code
}

func buildAndEnter(ctx context.Context, root string) (int, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "mailbox-bed-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	bin, err := build(ctx, root, dir)
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(bin)
	if err != nil {
		return 0, err
	}
	return runInOwnNamespaces(envBinaries + "=" + string(b))
}
