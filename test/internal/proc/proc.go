// Package proc runs the programs a test or a test bed starts: each with
// an explicit environment, its output kept for the failure report, and
// stopped by its own pid (SIGTERM, then SIGKILL) when the caller is done.
package proc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// waitDelay bounds how long Wait keeps reading the output once the
// process has exited: a child it left behind holding the pipes open would
// otherwise keep Done from closing until that child exits too.
const waitDelay = 2 * time.Second

// Options are the optional settings of a process.
type Options struct {
	// Tee, if set, also gets the process's output (stdout and stderr) as
	// it comes, e.g. os.Stderr to watch a test bed. Its errors are
	// ignored: the output is kept all the same.
	Tee io.Writer
}

// Process is a started program.
type Process struct {
	Name string // for messages

	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's, set before done is closed

	mu  sync.Mutex
	out bytes.Buffer
	tee io.Writer
}

// Start starts bin with args and exactly the environment env: nothing is
// inherited, so that what the program sees is what the caller chose.
func Start(name, bin string, env []string, args ...string) (*Process, error) {
	return Options{}.Start(name, bin, env, args...)
}

// Start is the package's Start with the options o.
func (o Options) Start(name, bin string, env []string, args ...string) (*Process, error) {
	p := &Process{Name: name, done: make(chan struct{}), tee: o.Tee}
	p.cmd = exec.Command(bin, args...)
	// An empty, non-nil slice: a nil Env would inherit this process's.
	p.cmd.Env = append([]string{}, env...)
	p.cmd.Stdout, p.cmd.Stderr = (*writer)(p), (*writer)(p)
	p.cmd.WaitDelay = waitDelay
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// writer is the process's stdout and stderr: one buffer, so that the
// output reads in the order it was written.
type writer Process

func (w *writer) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.out.Write(b)
	if w.tee != nil {
		// An error here must not reach exec's copier, which would stop
		// reading and leave the program blocked on a full pipe.
		_, _ = w.tee.Write(b)
	}
	return len(b), nil
}

// Output is everything the process has written so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Done is closed once the process has exited and its output is read.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process. Once the process has exited it
// returns os.ErrProcessDone: the pid is never signalled after it is
// reaped, so another program that got it is not.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// Wait waits up to timeout for the process to exit, and returns an error
// unless it exited with status 0. The output is not in the error: it is
// in Output.
func (p *Process) Wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s exited with %w", p.Name, p.err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s still running after %s", p.Name, timeout)
	}
}

// Stop ends the process if it is still running: SIGTERM, so that it can
// shut down as it would in a pod, then SIGKILL if it is still running
// after grace. It returns once the process has exited; the error says
// whether it had to be killed. How it exited is Wait's.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s: SIGTERM: %w; killed", p.Name, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s still running %s after SIGTERM; killed", p.Name, grace)
}

// LogField waits for a JSON log line (log/slog's JSONHandler) whose msg
// is msg and that has field, and returns the field's value: a string as
// it is, another value in JSON. It fails when ctx is done or the process
// exits without such a line.
func (p *Process) LogField(ctx context.Context, msg, field string) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// Exited is read before the output: once exited, the output is
		// complete, so a line written just before the exit is seen.
		exited := p.Exited()
		for line := range strings.Lines(p.Output()) {
			var rec map[string]json.RawMessage
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			var m string
			if json.Unmarshal(rec["msg"], &m) != nil || m != msg {
				continue
			}
			raw, ok := rec[field]
			if !ok {
				continue
			}
			var s string
			if json.Unmarshal(raw, &s) == nil {
				return s, nil
			}
			return string(raw), nil
		}
		if exited {
			return "", fmt.Errorf("%s exited (%v) without logging %q with %s", p.Name, p.err, msg, field)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s did not log %q with %s: %w", p.Name, msg, field, context.Cause(ctx))
		case <-p.done:
		case <-tick.C:
		}
	}
}

// FreeAddr returns a 127.0.0.1 address with a port that was free just now,
// for a program that must be told its address before it starts. Another
// program may take the port in between; the callers' programs are
// started right after.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// WaitListening waits up to timeout for a TCP listener on addr. If p is
// not nil, it fails as soon as p exits, instead of waiting out the
// timeout for a program that will never listen.
func WaitListening(addr string, timeout time.Duration, p *Process) error {
	deadline := time.Now().Add(timeout)
	for {
		exited := p != nil && p.Exited()
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		switch {
		case exited:
			return fmt.Errorf("%s exited (%v) without listening on %s", p.Name, p.err, addr)
		case time.Now().After(deadline):
			return fmt.Errorf("nothing listens on %s after %s: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Environ turns a map of variables into an environment for Start (and
// exec.Cmd), sorted so that it reads the same every time.
func Environ(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}
