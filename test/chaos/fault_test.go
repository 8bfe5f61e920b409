package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/openfaas/mailbox/test/e2e/bed"
)

// Faults, by the component each SIGKILLs and restarts.
const (
	faultMailbox   = "mailbox-fn"
	faultConnector = bed.Connector
	faultNATS      = "nats"
	faultGateway   = bed.Gateway
)

// faultOrder is the order faults come in, again and again in the long
// form.
var faultOrder = []string{faultMailbox, faultConnector, faultNATS, faultGateway}

// inject SIGKILLs the component of fault and restarts it, and returns
// once it is running again (the bed's readiness: listening, or the
// server's ready line). The provider restarts mailbox-fn by itself, as a
// container's restart policy would.
func inject(ctx context.Context, b *bed.Bed, rec *record, fault string) error {
	switch fault {
	case faultMailbox:
		exe := binaries.Functions[bed.Mailbox]
		before, err := processes(exe)
		if err != nil {
			return err
		}
		if len(before) != 1 {
			return fmt.Errorf("%d processes of %s, want 1", len(before), exe)
		}
		if err := syscall.Kill(before[0].nsPID, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill %s: %w", fault, err)
		}
		return poll(ctx, 60*time.Second, "mailbox-fn started again", func() error {
			now, err := processes(exe)
			if err == nil && (len(now) != 1 || now[0].hostPID == before[0].hostPID) {
				err = fmt.Errorf("processes %v, want one other than %d", now, before[0].hostPID)
			}
			return err
		})
	case faultNATS:
		return restart(b, b.NATS())
	case faultConnector, faultGateway, bed.ServeA, bed.ServeB:
		return restart(b, fault)
	case faultLeaderNode, faultFollowerNode, faultPartitionLeader, faultPartitionFollower, faultHeal:
		return injectCluster(ctx, b, rec, fault)
	}
	return fmt.Errorf("no fault %q", fault)
}

func restart(b *bed.Bed, name string) error {
	if err := b.Stop(name, true); err != nil {
		return err
	}
	return b.Start(name)
}

// process is a running program, as /proc shows it.
type process struct {
	hostPID int // its pid on the machine, /proc's
	nsPID   int // its pid in the bed's pid namespace, kill's
	rss     int64
}

// processes lists the running processes of the executable exe. /proc is
// the machine's, not the bed's pid namespace's.
func processes(exe string) ([]process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		if path, err := os.Readlink(filepath.Join(dir, "exe")); err != nil || path != exe {
			continue
		}
		status, err := os.ReadFile(filepath.Join(dir, "status"))
		if err != nil {
			continue // exited meanwhile
		}
		p := process{hostPID: pid}
		for line := range strings.Lines(string(status)) {
			key, value, _ := strings.Cut(line, ":")
			fields := strings.Fields(value)
			switch {
			case len(fields) == 0:
			case key == "NSpid":
				// From the outermost namespace to the process's own,
				// which is the bed's.
				p.nsPID, _ = strconv.Atoi(fields[len(fields)-1])
			case key == "VmRSS":
				kib, _ := strconv.ParseInt(fields[0], 10, 64)
				p.rss = kib << 10
			}
		}
		if p.nsPID == 0 {
			continue // a zombie, or not in the bed
		}
		out = append(out, p)
	}
	return out, nil
}

// poll calls cond every pollEvery until it returns nil, and returns its
// last error after timeout or when ctx ends.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() error) error {
	end := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("waiting %s for %s: %w", timeout, what, err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("waiting for %s: %w", what, ctx.Err()), err)
		case <-time.After(pollEvery):
		}
	}
}

// pollEvery is how often poll asks.
const pollEvery = 100 * time.Millisecond
