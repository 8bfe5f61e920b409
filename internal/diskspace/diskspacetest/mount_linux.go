package diskspacetest

import (
	"strconv"
	"syscall"
)

func mount(dir string, size int64) error {
	return syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.FormatInt(size, 10))
}

func unmount(dir string) error { return syscall.Unmount(dir, syscall.MNT_DETACH) }
