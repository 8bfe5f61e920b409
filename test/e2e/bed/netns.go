package bed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// envNetns tells a process that runInOwnNamespaces started its part: nsInit
// or nsBed.
const envNetns = "MAILBOX_BED_NETNS"

const (
	// nsInit is pid 1 of the bed's pid namespace (namespaceInit).
	nsInit = "init"
	// nsBed is the bed itself, pid 2, started by nsInit.
	nsBed = "bed"
)

// isBed reports whether this process is the bed that
// runInOwnNamespaces started in namespaces of its own.
func isBed() bool { return os.Getenv(envNetns) == nsBed }

// isNamespaceInit reports whether this process is pid 1 of the bed's
// namespaces, which must run namespaceInit and nothing else.
func isNamespaceInit() bool { return os.Getenv(envNetns) == nsInit }

// runInOwnNamespaces runs this program again with the same arguments and
// environment plus env, in a new network namespace that has only its own
// loopback and a new pid namespace, and returns the exit code. The
// OpenFaaS CE gateway binds :8080 and :8082 on every interface,
// hard-coded: in a namespace of its own those ports are always free, and
// nothing the bed starts can be reached from, or collide with, the
// machine's other programs. It needs root (CAP_SYS_ADMIN), as sessions
// and CI have. Stdin, stdout and stderr are shared, so a shell or go
// test's output work as usual.
//
// The pid namespace is what guarantees that nothing the bed started
// outlives it, whichever way it ends (a go test timeout's panic, a
// SIGKILL): when its pid 1 exits the kernel kills every process left in
// it. Pid 1 is namespaceInit, which runs the bed as its child.
func runInOwnNamespaces(env ...string) (int, error) {
	cmd, err := ownNamespacesCommand(os.Args[1:], env...)
	if err != nil {
		return 0, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// SIGINT and SIGTERM are the bed's to handle: its pid 1 passes them
	// on to it, and it stops in order.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err = cmd.Start(); err == nil {
		go func() {
			for s := range sigs {
				_ = cmd.Process.Signal(s)
			}
		}()
		err = cmd.Wait()
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		return exit.ExitCode(), nil
	case errors.Is(err, syscall.EPERM):
		return 0, fmt.Errorf("the bed needs namespaces of its own, which only root can make: %w", err)
	default:
		return 0, err
	}
}

// ownNamespacesCommand is this program with args and this environment plus
// env, to be run as pid 1 (namespaceInit) of a network and a pid
// namespace of its own.
func ownNamespacesCommand(args []string, env ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(append(os.Environ(), env...), envNetns+"="+nsInit)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWPID,
		// Should this process die first, its pid 1 goes too, and with it
		// the whole namespace.
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd, nil
}

// namespaceInit is pid 1 of the bed's namespaces: it brings up loopback,
// runs this program again as the bed, and returns the bed's exit code
// once it exits, which ends the namespace and every process left in it.
//
// Pid 1 has two duties the bed could not take on itself. Processes whose
// parent exits are re-parented to it, and stay zombies until it reaps
// them: it waits for any child, which in the bed itself would steal the
// exit statuses os/exec waits for. And a signal reaches pid 1 only
// through a handler: SIGINT and SIGTERM are passed on to the bed, which
// stops its components in order.
func namespaceInit() int {
	if err := loopbackUp(); err != nil {
		fmt.Fprintln(os.Stderr, "bed:", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bed:", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	env := append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, envNetns+"=") }),
		envNetns+"="+nsBed)
	bed, err := os.StartProcess(self, os.Args, &os.ProcAttr{Env: env, Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bed:", err)
		return 1
	}
	go func() {
		for s := range sigs {
			_ = bed.Signal(s)
		}
	}()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
		case err != nil:
			fmt.Fprintln(os.Stderr, "bed: wait:", err)
			return 1
		case pid != bed.Pid:
			// An orphan, reaped.
		case ws.Signaled():
			return 128 + int(ws.Signal())
		default:
			return ws.ExitStatus()
		}
	}
}

// HostPID is this process's pid as the machine sees it: in the bed's pid
// namespace os.Getpid is another number. /proc is the machine's, so
// /proc/self names the reader by that pid.
func HostPID() (int, error) {
	self, err := os.Readlink("/proc/self")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(self)
}

// loopbackUp brings up lo, which a new network namespace starts with
// down (what `ip link set lo up` does).
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("read flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}
