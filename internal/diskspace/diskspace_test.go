package diskspace_test

import (
	"errors"
	"testing"

	"github.com/openfaas/mailbox/internal/diskspace"
	"github.com/openfaas/mailbox/internal/diskspace/diskspacetest"
	"github.com/openfaas/mailbox/internal/queue"
)

// The guard refuses once the file system has less than its reserve free,
// and passes again once space is given back.
func TestGuard(t *testing.T) {
	t.Parallel()
	dir := diskspacetest.Mount(t, 8<<20)
	g := diskspace.Guard{Dir: dir, Reserve: 1 << 20}
	if err := g.Check(); err != nil {
		t.Fatalf("an empty file system: %v", err)
	}
	free := diskspacetest.Fill(t, dir, 512<<10)
	if err := g.Check(); !errors.Is(err, queue.ErrStorageFull) {
		t.Fatalf("512 KiB free with a 1 MiB reserve: %v, want ErrStorageFull", err)
	}
	if err := (diskspace.Guard{Dir: dir}).Check(); err != nil {
		t.Fatalf("no reserve: %v", err)
	}
	free()
	if err := g.Check(); err != nil {
		t.Fatalf("the filler removed: %v", err)
	}
	if err := (diskspace.Guard{Dir: dir + "/missing", Reserve: 1 << 20}).Check(); err != nil {
		t.Fatalf("an unreadable file system: %v, want nil (the broker's answer counts)", err)
	}
}
