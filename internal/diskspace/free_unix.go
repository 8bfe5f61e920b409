//go:build linux || darwin || freebsd

package diskspace

import "syscall"

// Free is the space free to an unprivileged writer on the file system
// holding dir; ok is false when it cannot be read.
func Free(dir string) (free int64, ok bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(uint64(st.Bavail) * uint64(st.Bsize)), true
}
