package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// machine describes where the run happened.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kib, err := strconv.Atoi(strings.Fields(v)[0]); err == nil {
					mem = fmt.Sprintf(", %.1f GiB", float64(kib)/(1<<20))
				}
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)%s, %s %s/%s", runtime.NumCPU(), model, mem, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// cpuTicks is the CPU time, in clock ticks, that each other user-space
// process has used, its reaped children included: this process, its
// children and kernel threads (which do this process's I/O) are left out.
type cpuTicks map[int]int64

// pfKthread marks a kernel thread in /proc/<pid>/stat's flags.
const pfKthread = 0x00200000

func readCPU() (cpuTicks, error) {
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	t := cpuTicks{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone since the listing
		}
		// The fields after the command name, which may hold spaces, start
		// with the state: ppid is the 2nd, flags the 7th, utime, stime,
		// cutime and cstime the 12th to 15th.
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if ppid == self || flags&pfKthread != 0 {
			continue
		}
		var ticks int64
		for _, v := range f[11:15] {
			n, _ := strconv.ParseInt(v, 10, 64)
			ticks += n
		}
		t[pid] = ticks
	}
	return t, nil
}

// otherShare is the share of the machine's CPU (0..1) that other
// processes used between two readings lasting seconds: anything much above
// zero means the figures measured then are not this program's alone.
//
// A process that ends is counted in its parent's children's time once
// reaped, with the time it had used before the first reading too; that
// part is taken off again.
func otherShare(from, to cpuTicks, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	var used int64
	for pid, ticks := range to {
		used += max(0, ticks-from[pid])
	}
	for pid, ticks := range from {
		if _, ok := to[pid]; !ok {
			used -= ticks
		}
	}
	return max(0, float64(used)/ticksPerSecond/seconds/float64(runtime.NumCPU()))
}
