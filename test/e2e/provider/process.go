package provider

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/openfaas/faas-provider/types"

	"github.com/openfaas/mailbox/test/internal/proc"
)

// function is one deployment: its spec and the goroutine that keeps its
// process running. An update replaces the whole function, so everything
// but the fields under mu is fixed once it is in Provider.functions.
type function struct {
	spec    types.FunctionDeployment
	exe     string
	port    int
	dir     string // working directory; secrets/ is the secret_mount_path
	created time.Time
	out     *output
	backoff time.Duration
	grace   time.Duration
	log     *slog.Logger

	ready    atomic.Bool  // the current process accepts connections
	restarts atomic.Int64 // unexpected exits

	mu       sync.Mutex
	replicas uint64             // 1 while supervised, 0 once stopped
	cancel   context.CancelFunc // stops the supervisor
	done     chan struct{}      // closed when the supervisor has returned
}

func (f *function) addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(f.port))
}

func (f *function) replicaCount() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.replicas
}

// start runs the supervisor unless it is already running.
func (f *function) start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.replicas, f.cancel, f.done = 1, cancel, make(chan struct{})
	go f.supervise(ctx, f.done)
}

// stop ends the supervisor, which stops the process (SIGTERM, then
// SIGKILL after the grace), and waits for both.
func (f *function) stop() {
	f.mu.Lock()
	cancel, done := f.cancel, f.done
	f.replicas, f.cancel, f.done = 0, nil, nil
	f.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

// supervise runs the process until ctx ends, starting it again after the
// backoff whenever it exits on its own: a container's restart policy.
func (f *function) supervise(ctx context.Context, done chan struct{}) {
	defer close(done)
	for {
		err := f.run(ctx)
		if ctx.Err() != nil {
			f.out.add(fmt.Sprintf("[provider] stopped (%v)", err))
			return
		}
		n := f.restarts.Add(1)
		f.log.Warn("function process exited unexpectedly; restarting", "err", err, "restarts", n, "backoff", f.backoff)
		f.out.add(fmt.Sprintf("[provider] exited unexpectedly (%v); restart %d in %s", err, n, f.backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.backoff):
		}
	}
}

// run starts the process, marks the function ready once its port accepts
// connections, and returns when the process has exited.
func (f *function) run(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, f.exe)
	cmd.Dir = f.dir
	cmd.Env = f.env()
	// The same writer for both streams: one pipe, in order.
	w := &proc.LineWriter{Line: f.out.add}
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group, so that stopping it reaches any children and
	// a Ctrl-C meant for the test does not reach it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	// After the grace Wait kills the process and stops copying its output.
	cmd.WaitDelay = f.grace
	if err := cmd.Start(); err != nil {
		return err
	}
	f.log.Debug("function process started", "pid", cmd.Process.Pid)
	f.out.add(fmt.Sprintf("[provider] started pid %d on %s", cmd.Process.Pid, f.addr()))

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer f.ready.Store(false)

	probe := time.NewTicker(50 * time.Millisecond)
	defer probe.Stop()
	for {
		select {
		case err := <-exited:
			w.Flush()
			// Like a container's end: nothing of the group outlives it.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			if err == nil {
				err = errors.New("exit status 0")
			}
			return err
		case <-probe.C:
			if f.ready.Load() {
				continue
			}
			c, err := net.DialTimeout("tcp", f.addr(), 200*time.Millisecond)
			if err == nil {
				c.Close()
				f.ready.Store(true)
				f.log.Info("function ready", "addr", f.addr(), "pid", cmd.Process.Pid)
			}
		}
	}
}

// env is what a container would get: a minimal environment, the
// deployment's envVars, and the of-watchdog settings the function's main
// reads, which come last so a deployment cannot move its port.
func (f *function) env() []string {
	env := map[string]string{}
	for _, k := range []string{"PATH", "HOME"} {
		if v, ok := os.LookupEnv(k); ok {
			env[k] = v
		}
	}
	if f.spec.EnvProcess != "" {
		env["fprocess"] = f.spec.EnvProcess
	}
	maps.Copy(env, f.spec.EnvVars)
	env["upstream_url"] = "http://" + f.addr()
	env["secret_mount_path"] = filepath.Join(f.dir, "secrets")
	list := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		list = append(list, k+"="+env[k])
	}
	return list
}
