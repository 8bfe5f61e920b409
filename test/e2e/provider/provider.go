// Package provider is an OpenFaaS provider for the end-to-end test bed: it
// runs each function as a local process, the way faasd runs each function
// as a container. The real OpenFaaS CE gateway points functions_provider_url
// at it and proxies /function/<name> through it.
//
// The HTTP API is served by faas-provider's bootstrap package, which keeps
// its router in a package variable and registers its Prometheus metrics with
// the default registry: it can run once per process, so a process can Start
// one Provider (tests share one from TestMain).
package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/openfaas/faas-provider/types"

	"github.com/openfaas/mailbox/test/internal/proc"
)

const (
	// Namespace is the only namespace: the one the gateway uses by default.
	Namespace = "openfaas-fn"
	// Name is what /system/info reports as the provider.
	Name = "mailbox-bed"
	// Orchestration is what /system/info reports as the orchestration.
	Orchestration = "process"
)

// Options configure a Provider. Only Port and Images are required.
type Options struct {
	// Port is the TCP port of the provider API. bootstrap.Serve listens on
	// ":Port", all interfaces; the address cannot be chosen.
	Port int

	// Images maps the image of a deployment, e.g.
	// "ghcr.io/openfaas/mailbox:latest", to the local executable that is
	// run in its place. Deploying any other image is refused.
	Images map[string]string

	// Secrets seeds the secrets store with name -> value.
	Secrets map[string]string

	// StateDir holds a directory per function: its working directory and,
	// under secrets/, its secret_mount_path. By default a temporary
	// directory is used and removed by Close.
	StateDir string

	// Logs, if set, gets every function's stdout and stderr, e.g. the
	// bed's one log: each line in one Write, prefixed with "<name>: ",
	// never two at once. The Provider never closes it.
	Logs io.Writer
	// LogLines is how many of a function's last output lines the
	// Provider keeps in memory, for Logs and /system/logs. Default 500.
	LogLines int

	// RestartBackoff is how long a function whose process exited
	// unexpectedly stays down before it is started again. Default 500ms.
	RestartBackoff time.Duration
	// StopGrace is how long a process has between SIGTERM and SIGKILL.
	// Default 5s.
	StopGrace time.Duration
	// Timeout bounds reading a request, writing a response, and each
	// proxied invocation (faas-provider's proxy uses the read timeout as
	// its client timeout). Default 60s, the gateway's own default.
	Timeout time.Duration

	// Logger receives the Provider's own logs. Default slog.Default().
	Logger *slog.Logger
}

// Provider runs functions as local processes and serves the OpenFaaS
// provider API for them. Its methods are safe for concurrent use.
type Provider struct {
	opts     Options
	log      *slog.Logger
	stateDir string
	ownState bool // stateDir is a temporary directory Close removes

	// opMu serialises deploy, update, delete and scale, which wait for
	// processes to stop; mu guards the maps and is only held briefly.
	opMu      sync.Mutex
	mu        sync.Mutex
	functions map[string]*function
	outputs   map[string]*output // outlive their function: see Logs
	secrets   map[string][]byte
	wmu       sync.Mutex // serialises writes to Logs
	closed    bool

	stopServe context.CancelFunc
	served    chan struct{}
}

// New checks opts and loads the secrets. It starts nothing: see Start.
func New(opts Options) (*Provider, error) {
	if opts.Port <= 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("provider: port %d: want 1-65535", opts.Port)
	}
	for image, exe := range opts.Images {
		if _, err := os.Stat(exe); err != nil {
			return nil, fmt.Errorf("provider: image %s: %w", image, err)
		}
	}
	if opts.LogLines <= 0 {
		opts.LogLines = 500
	}
	if opts.RestartBackoff <= 0 {
		opts.RestartBackoff = 500 * time.Millisecond
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 5 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &Provider{
		opts:      opts,
		log:       opts.Logger.With("component", "provider"),
		functions: map[string]*function{},
		outputs:   map[string]*output{},
		secrets:   map[string][]byte{},
	}
	for name, v := range opts.Secrets {
		p.secrets[name] = []byte(v)
	}
	p.stateDir = opts.StateDir
	if p.stateDir == "" {
		dir, err := os.MkdirTemp("", "mailbox-bed-provider-")
		if err != nil {
			return nil, fmt.Errorf("provider: %w", err)
		}
		p.stateDir, p.ownState = dir, true
	}
	return p, nil
}

// URL is the provider API's base URL on the loopback interface.
func (p *Provider) URL() string {
	return "http://127.0.0.1:" + strconv.Itoa(p.opts.Port)
}

// Addr is the host:port the function's process listens on (its
// upstream_url), or "" if no such function is deployed.
func (p *Provider) Addr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.functions[name]; f != nil {
		return f.addr()
	}
	return ""
}

// Restarts counts how often the function's process exited unexpectedly
// and was started again since it was last deployed or updated.
func (p *Provider) Restarts(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.functions[name]; f != nil {
		return int(f.restarts.Load())
	}
	return 0
}

// Logs returns the function's last output lines, including the
// provider's notes on its exits and restarts. They are kept after the
// function is deleted, for a test to print when it fails.
func (p *Provider) Logs(name string) string {
	p.mu.Lock()
	o := p.outputs[name]
	p.mu.Unlock()
	if o == nil {
		return ""
	}
	return o.String()
}

// requestError is a deployment or request the caller got wrong; the
// handlers answer it with its status rather than 500.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func notFound(name string) error {
	return &requestError{http.StatusNotFound, fmt.Sprintf("function %s not found in namespace %s", name, Namespace)}
}

var errClosed = errors.New("provider: closed")

// nameRE is a DNS-1123 label, as the gateway and faas-netes require; it
// also keeps names safe to use as directory names.
var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// checkNamespace accepts the one namespace, or none meaning it.
func checkNamespace(ns string) error {
	if ns != "" && ns != Namespace {
		return badRequest("namespace %q not supported: this provider only has %s", ns, Namespace)
	}
	return nil
}

// Deploy starts the function's process, or, if a function of that name
// exists, replaces it as Update does. It returns once the process is
// started, not once it accepts connections: /system/function/<name>
// tells when it does.
func (p *Provider) Deploy(spec types.FunctionDeployment) error {
	return p.deploy(spec, false)
}

// Update replaces a deployed function: its process is stopped and one
// with the new spec started on the same port.
func (p *Provider) Update(spec types.FunctionDeployment) error {
	return p.deploy(spec, true)
}

func (p *Provider) deploy(spec types.FunctionDeployment, mustExist bool) error {
	if !nameRE.MatchString(spec.Service) {
		return badRequest("service %q is not a valid function name (lower-case letters, digits and '-')", spec.Service)
	}
	if err := checkNamespace(spec.Namespace); err != nil {
		return err
	}
	spec.Namespace = Namespace
	exe, ok := p.opts.Images[spec.Image]
	if !ok {
		return badRequest("image %q is not known to this provider: it runs local executables for the images %v",
			spec.Image, slices.Sorted(maps.Keys(p.opts.Images)))
	}

	p.opMu.Lock()
	defer p.opMu.Unlock()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errClosed
	}
	secrets := map[string][]byte{}
	var missing []string
	for _, s := range spec.Secrets {
		v, ok := p.secrets[s]
		if !ok {
			missing = append(missing, s)
		}
		secrets[s] = v
	}
	old := p.functions[spec.Service]
	out := p.outputs[spec.Service]
	p.mu.Unlock()

	if len(missing) > 0 {
		return badRequest("secrets %v not found in namespace %s", missing, Namespace)
	}
	if mustExist && old == nil {
		return notFound(spec.Service)
	}
	if out == nil {
		out = &output{name: spec.Service, max: p.opts.LogLines, wmu: &p.wmu, w: p.opts.Logs}
		p.mu.Lock()
		p.outputs[spec.Service] = out
		p.mu.Unlock()
	}

	// Like a container's IP, the port stays across updates and restarts.
	port := 0
	created := time.Now()
	if old != nil {
		old.stop()
		port, created = old.port, old.created
	} else {
		var err error
		if port, err = p.freePort(); err != nil {
			return fmt.Errorf("provider: free port: %w", err)
		}
	}

	dir := filepath.Join(p.stateDir, spec.Service)
	if err := proc.WriteSecrets(filepath.Join(dir, "secrets"), secrets); err != nil {
		return err
	}
	f := &function{
		spec:     spec,
		exe:      exe,
		port:     port,
		dir:      dir,
		created:  created,
		replicas: 1,
		out:      out,
		backoff:  p.opts.RestartBackoff,
		grace:    p.opts.StopGrace,
		log:      p.log.With("function", spec.Service),
	}
	p.mu.Lock()
	p.functions[spec.Service] = f
	p.mu.Unlock()
	f.start()
	p.log.Info("deployed", "function", spec.Service, "image", spec.Image, "exe", exe, "addr", f.addr())
	return nil
}

// Delete stops the function's process and forgets the function.
func (p *Provider) Delete(name string) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	f := p.functions[name]
	delete(p.functions, name)
	p.mu.Unlock()
	if f == nil {
		return notFound(name)
	}
	f.stop()
	p.log.Info("deleted", "function", name)
	return nil
}

// Scale stops the process for 0 replicas and starts it for more. One
// process is all a function gets, so any count above 1 is recorded as 1.
func (p *Provider) Scale(name string, replicas uint64) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	f, closed := p.functions[name], p.closed
	p.mu.Unlock()
	if closed {
		return errClosed
	}
	if f == nil {
		return notFound(name)
	}
	want := min(replicas, 1)
	if f.replicaCount() == want {
		return nil
	}
	if want == 0 {
		f.stop()
	} else {
		f.start()
	}
	p.log.Info("scaled", "function", name, "requested", replicas, "replicas", want)
	return nil
}

// freePort is a free port that no function has, with p.opMu held. A port
// proc.FreePort found free is free only until a process binds it, and the
// kernel may hand the same one out again before then: two functions
// deployed one after the other once got the same port, and the second
// could never start.
func (p *Provider) freePort() (int, error) {
	p.mu.Lock()
	taken := map[int]bool{}
	for _, f := range p.functions {
		taken[f.port] = true
	}
	p.mu.Unlock()
	for range 100 {
		port, err := proc.FreePort()
		if err != nil || !taken[port] {
			return port, err
		}
	}
	return 0, errors.New("every free port found is a function's already")
}

// status is the function as /system/functions reports it.
func (f *function) status() types.FunctionStatus {
	s := types.FunctionStatus{
		Name:        f.spec.Service,
		Image:       f.spec.Image,
		Namespace:   f.spec.Namespace,
		EnvProcess:  f.spec.EnvProcess,
		EnvVars:     f.spec.EnvVars,
		Secrets:     f.spec.Secrets,
		Constraints: f.spec.Constraints,
		Labels:      f.spec.Labels,
		Annotations: f.spec.Annotations,
		Limits:      f.spec.Limits,
		Requests:    f.spec.Requests,
		Replicas:    f.replicaCount(),
		CreatedAt:   f.created,
	}
	if f.ready.Load() {
		s.AvailableReplicas = 1
	}
	return s
}

func (p *Provider) list() []types.FunctionStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := make([]types.FunctionStatus, 0, len(p.functions))
	for _, name := range slices.Sorted(maps.Keys(p.functions)) {
		list = append(list, p.functions[name].status())
	}
	return list
}

func (p *Provider) get(name string) (types.FunctionStatus, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.functions[name]
	if f == nil {
		return types.FunctionStatus{}, false
	}
	return f.status(), true
}
