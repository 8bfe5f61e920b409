// Package proc runs the programs a test or a test bed starts: each with
// an explicit environment, the end of its output kept for the failure
// report, and stopped by its own pid (SIGTERM, then SIGKILL) when the
// caller is done.
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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// waitDelay bounds how long Wait keeps reading the output once the
// process has exited: a child it left behind holding the pipes open would
// otherwise keep Done from closing until that child exits too.
const waitDelay = 2 * time.Second

// maxOutput is how much of a process's output is kept: the last MiB, more
// than any failure report or awaited line needs, however long it runs.
const maxOutput = 1 << 20

// Options are the optional settings of a process.
type Options struct {
	// Tee, if set, also gets the process's output (stdout and stderr) as
	// it comes, e.g. os.Stderr to watch a test bed. Its errors are
	// ignored: the output is kept all the same. Once the process has
	// exited, its Flush method, if it has one (LineWriter), is called.
	Tee io.Writer
}

// Process is a started program.
type Process struct {
	Name string // for messages

	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's, set before done is closed

	mu      sync.Mutex
	out     []byte // the last maxOutput bytes, and up to as many before them
	written int64  // bytes written in all
	tee     io.Writer
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
		if f, ok := p.tee.(interface{ Flush() }); ok {
			p.mu.Lock()
			f.Flush()
			p.mu.Unlock()
		}
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
	w.out = append(w.out, b...)
	w.written += int64(len(b))
	if len(w.out) > 2*maxOutput {
		// Copied, not resliced, so that what is dropped is freed; at
		// twice the bound, so that copies are rare.
		w.out = append([]byte(nil), w.out[len(w.out)-maxOutput:]...)
	}
	if w.tee != nil {
		// An error here must not reach exec's copier, which would stop
		// reading and leave the program blocked on a full pipe.
		_, _ = w.tee.Write(b)
	}
	return len(b), nil
}

// Output is what the process has written so far: all of it, or its last
// MiB.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return string(p.out[max(0, len(p.out)-maxOutput):])
}

// Written is how many bytes the process has written so far: a mark for
// OutputSince.
func (p *Process) Written() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.written
}

// OutputSince is what the process has written after the mark Written
// returned, as far as Output still holds it.
func (p *Process) OutputSince(mark int64) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	from := len(p.out) - int(p.written-mark)
	return string(p.out[max(0, from, len(p.out)-maxOutput):])
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
	var value string
	err := p.waitFor(ctx, fmt.Sprintf("a log line with msg %q and %s", msg, field), func(out string) bool {
		for line := range strings.Lines(out) {
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
			if json.Unmarshal(raw, &value) != nil {
				value = string(raw)
			}
			return true
		}
		return false
	})
	return value, err
}

// WaitOutput waits until the process has printed text. It fails when ctx
// is done or the process exits without printing it.
func (p *Process) WaitOutput(ctx context.Context, text string) error {
	return p.waitFor(ctx, fmt.Sprintf("%q", text), func(out string) bool { return strings.Contains(out, text) })
}

// waitFor polls the output until found reports that it holds what, and
// fails when ctx is done or the process exits first.
func (p *Process) waitFor(ctx context.Context, what string, found func(out string) bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// Exited is read before the output: once exited, the output is
		// complete, so a line written just before the exit is seen.
		exited := p.Exited()
		if found(p.Output()) {
			return nil
		}
		if exited {
			return fmt.Errorf("%s exited (%v) without printing %s", p.Name, p.err, what)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s has not printed %s: %w", p.Name, what, context.Cause(ctx))
		case <-p.done:
		case <-tick.C:
		}
	}
}

// LineWriter calls Line with each line written to it, without its line
// ending, so that output shared by several programs, or kept line by
// line, holds whole lines. Flush passes on a last line left without a
// newline. It is not safe for concurrent use; a Process calls its Tee
// under a lock, and exec.Cmd copies one writer given as both Stdout and
// Stderr in one goroutine.
type LineWriter struct {
	Line    func(string)
	partial []byte
}

func (w *LineWriter) Write(b []byte) (int, error) {
	n := len(b)
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			w.partial = append(w.partial, b...)
			return n, nil
		}
		w.Line(strings.TrimSuffix(string(w.partial)+string(b[:i]), "\r"))
		w.partial = w.partial[:0]
		b = b[i+1:]
	}
}

// Flush passes on the last line if it had no newline.
func (w *LineWriter) Flush() {
	if len(w.partial) > 0 {
		w.Line(string(w.partial))
		w.partial = w.partial[:0]
	}
}

// FreePort returns a 127.0.0.1 TCP port that was free just now, for a
// program that must be told its port before it starts. Another program
// may take it in between; the callers' programs are started right after.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort as a 127.0.0.1 address.
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// WriteSecrets replaces dir with one file per secret, named after it, as
// programs reading OpenFaaS secrets from their secret_mount_path expect.
func WriteSecrets(dir string, secrets map[string][]byte) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, v := range secrets {
		if err := os.WriteFile(filepath.Join(dir, name), v, 0o400); err != nil {
			return err
		}
	}
	return nil
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
