package bed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// envNetns marks a process that runs in the network namespace the bed
// made for it.
const envNetns = "MAILBOX_BED_NETNS"

// InOwnNetwork reports whether this process was started by
// RunInOwnNetwork, in a network namespace of its own.
func InOwnNetwork() bool { return os.Getenv(envNetns) == "1" }

// RunInOwnNetwork runs this program again with the same arguments and
// environment plus env, in a new network namespace that has only its own
// loopback, and returns the exit code. The OpenFaaS CE gateway binds
// :8080 and :8082 on every interface, hard-coded: in a namespace of its
// own those ports are always free, and nothing the bed starts can be
// reached from, or collide with, the machine's other programs. It needs
// root (CAP_SYS_ADMIN), as sessions and CI have. Stdin, stdout and
// stderr are shared, so a shell or go test's output work as usual.
func RunInOwnNetwork(env ...string) (int, error) {
	cmd, err := ownNetworkCommand(os.Args[1:], env...)
	if err != nil {
		return 0, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		return exit.ExitCode(), nil
	case errors.Is(err, syscall.EPERM):
		return 0, fmt.Errorf("the bed needs a network namespace of its own, which only root can make: %w", err)
	default:
		return 0, err
	}
}

// ownNetworkCommand is this program with args and this environment plus
// env, to be run in a network namespace of its own.
func ownNetworkCommand(args []string, env ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(append(os.Environ(), env...), envNetns+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET,
		// The bed's processes must not outlive it.
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd, nil
}

// LoopbackUp brings up lo, which a new network namespace starts with
// down (what `ip link set lo up` does).
func LoopbackUp() error {
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
