// Package diskspacetest gives a test a small file system of its own, to
// be filled.
package diskspacetest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/openfaas/mailbox/internal/diskspace"
)

// Mount mounts a tmpfs of size bytes on a new directory, unmounted when
// the test ends, and returns the directory. It skips the test unless it
// runs as root on Linux, which mounting needs.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount(dir, size); err != nil {
		t.Skipf("cannot mount a tmpfs on %s: %v", dir, err)
	}
	// Registered after t.TempDir's own cleanup, so it runs first.
	t.Cleanup(func() {
		if err := unmount(dir); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// Fill writes a file in dir until the file system has at most leave bytes
// free, and returns a function that removes it, giving the space back.
func Fill(t testing.TB, dir string, leave int64) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 4096)
	for {
		avail, ok := diskspace.Free(dir)
		if !ok {
			t.Fatalf("cannot read the free space on %s", dir)
		}
		if avail <= leave {
			break
		}
		n := min(int64(len(block)), avail-leave)
		if _, err := f.Write(block[:n]); err != nil {
			break // full: nothing is left to leave
		}
	}
	return func() {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			t.Error(err)
		}
	}
}
