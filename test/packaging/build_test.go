package packaging

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openfaas/mailbox/test/internal/fnbuild"
	"github.com/openfaas/mailbox/test/internal/proc"
)

// TestFunctionsBuildAndServe creates each function's build context as
// faas-cli does, builds it outside the repository with the commands of
// the template's build stage, and runs the result: the mailbox function on
// NATS Streaming (embedded by `mailbox serve --backend stan`, whose
// connector delivers), the example behind a stand-in gateway, requeuing
// itself through the mailbox function when its API answers 429.
func TestFunctionsBuildAndServe(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("builds the linux images' binaries natively")
	}
	t.Setenv("REGISTRY", "")
	t.Setenv("TAG", "")
	s := loadStack(t)
	root := repoRoot(t)
	df := parseDockerfile(t, templateDir(t))
	buildDir := t.TempDir()
	if strings.HasPrefix(buildDir, root+string(filepath.Separator)) {
		t.Fatalf("temporary directory %s is inside the repository", buildDir)
	}

	// faas-cli runs in the directory of stack.yml: the template, handler
	// and copy paths are relative to it. CreateContext runs go-sdk's
	// CreateBuildContext there.
	contexts := map[string]string{}
	for _, name := range wantFunctions {
		fn := s.Functions[name]
		dir, err := s.CreateContext(name, buildDir)
		if err != nil {
			t.Fatal(err)
		}
		checkLayout(t, root, dir, fn.Handler, s.StackConfiguration.CopyExtraPaths)
		contexts[name] = dir
	}
	if t.Failed() {
		return
	}

	binaries := map[string]string{}
	for _, name := range wantFunctions {
		start := time.Now()
		runBuildStage(t, df, contexts[name])
		bin := filepath.Join(contexts[name], "handler")
		checkStatic(t, bin)
		binaries[name] = bin
		t.Logf("%s: build stage done in %s", name, time.Since(start).Round(100*time.Millisecond))
	}
	if t.Failed() {
		return
	}

	// NATS Streaming and a connector, from the repository's standalone
	// binary; the connector delivers through the stand-in gateway.
	gw := startGateway(t)
	mailboxBin := filepath.Join(t.TempDir(), "mailbox")
	goBuild(t, root, mailboxBin, "./cmd/mailbox")
	serve := startProcess(t, "mailbox serve", mailboxBin, nil,
		"serve", "--backend", "stan", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--gateway-url", gw.srv.URL, "--log-format", "json")
	natsURL := logField(t, serve, "embedded NATS server started", "url")

	// The functions run with stack.yml's environment, pointed at the test's
	// servers. healthcheck_interval is shortened so that SIGTERM is quick.
	api := startAPI(t)
	mailboxEnv := overrides(s.Functions["mailbox"].Environment, map[string]string{
		"nats_url":             natsURL,
		"healthcheck_interval": "1s",
	})
	mailboxFn, mailboxAddr := startFunction(t, "mailbox", binaries["mailbox"], mailboxEnv)
	gw.route("mailbox", mailboxAddr)
	waitHealthy(t, "http://"+mailboxAddr+"/healthz")

	rlEnv := s.Functions["ratelimited"].Environment
	mailboxURL, err := url.Parse(rlEnv["mailbox_url"])
	if err != nil {
		t.Fatal(err)
	}
	gwURL, _ := url.Parse(gw.srv.URL)
	mailboxURL.Host = gwURL.Host
	rlFn, rlAddr := startFunction(t, "ratelimited", binaries["ratelimited"], overrides(rlEnv, map[string]string{
		"api_url":              api.srv.URL,
		"mailbox_url":          mailboxURL.String(),
		"healthcheck_interval": "1s",
	}))
	gw.route("ratelimited", rlAddr)

	t.Run("mailbox answers a requeue", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+mailboxAddr+"/deadletter/later", strings.NewReader("work"))
		req.Header.Set("Content-Type", "text/plain")
		req.Header.Set("X-Delay-Duration", "3600")
		res, body := do(t, req)
		var a struct{ Status, ID string }
		_ = json.Unmarshal(body, &a)
		if res.StatusCode != http.StatusAccepted || a.Status != "scheduled" || a.ID == "" ||
			res.Header.Get("X-Mailbox-Message-Id") != a.ID {
			t.Fatalf("POST /deadletter/later answered %d %s (X-Mailbox-Message-Id %q), want 202 scheduled with the id",
				res.StatusCode, body, res.Header.Get("X-Mailbox-Message-Id"))
		}
	})

	t.Run("ratelimited requeues itself and is called back", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, gw.srv.URL+"/function/ratelimited", strings.NewReader("job"))
		res, body := do(t, req)
		var a struct{ Status, ID string }
		_ = json.Unmarshal(body, &a)
		if res.StatusCode != http.StatusAccepted || a.Status != "requeued" || a.ID == "" {
			t.Fatalf("first call answered %d %s, want 202 requeued", res.StatusCode, body)
		}
		// The API's Retry-After is 1 s; the connector calls back through
		// the gateway with X-Retries 1 and the API now takes the work.
		deadline := time.Now().Add(30 * time.Second)
		for !gw.answered("ratelimited", "1", http.StatusOK) {
			if time.Now().After(deadline) {
				t.Fatalf("no delivery answered 200; gateway saw %v, API saw %q", gw.calls(), api.calls())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if calls := api.calls(); len(calls) != 2 || calls[0] != "job" || calls[1] != "job" {
			t.Fatalf("API calls %q, want the job twice", calls)
		}
	})

	t.Run("SIGTERM drains and exits 0", func(t *testing.T) {
		for _, p := range []*proc.Process{mailboxFn, rlFn} {
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
		// Still served during healthcheck_interval, as of-watchdog
		// keeps sending requests until the pod is out of rotation.
		if code := get(t, "http://"+mailboxAddr+"/healthz"); code != http.StatusOK {
			t.Errorf("mailbox /healthz right after SIGTERM answered %d, want 200", code)
		}
		for _, p := range []*proc.Process{mailboxFn, rlFn} {
			if err := p.Wait(10 * time.Second); err != nil {
				t.Errorf("after SIGTERM: %v:\n%s", err, p.Output())
			}
			if !strings.Contains(p.Output(), "handler: drained") {
				t.Errorf("%s did not log that it drained:\n%s", p.Name, p.Output())
			}
		}
	})
}

// checkLayout checks the context as the template expects it: the template
// at the top, the handler and the copy paths under function/, nothing of
// the repository besides.
func checkLayout(t *testing.T, root, dir, handler string, copies []string) {
	t.Helper()
	if strings.HasPrefix(dir, root+string(filepath.Separator)) {
		t.Errorf("context %s is inside the repository", dir)
	}
	for _, f := range []string{"Dockerfile", "template.yml", "go.mod", "main.go"} {
		same(t, filepath.Join(templateDir(t), f), filepath.Join(dir, f))
	}
	entries, err := os.ReadDir(filepath.Join(root, handler))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			same(t, filepath.Join(root, handler, e.Name()), filepath.Join(dir, "function", e.Name()))
		}
	}
	for _, c := range copies {
		if _, err := os.Stat(filepath.Join(dir, "function", c)); err != nil {
			t.Errorf("copy path %s is not in the context: %v", c, err)
		}
	}
	same(t, filepath.Join(root, "go.mod"), filepath.Join(dir, "function", "go.mod"))
}

func same(t *testing.T, want, got string) {
	t.Helper()
	a, err1 := os.ReadFile(want)
	b, err2 := os.ReadFile(got)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Errorf("%s is not a copy of %s (%v, %v)", got, want, err1, err2)
	}
}

// runBuildStage runs the template's build stage in dir, a build context,
// with fnbuild.RunBuildStage: WORKDIR /go/src/handler is dir, the COPYs
// are checked to copy the context onto itself, and every RUN runs with sh
// in that directory with the stage's ENV and ARGs, the platform ARGs set
// to this machine's as BuildKit would for a native build. Any other
// instruction fails the test, so that the test keeps running exactly what
// the image build runs. The output of the RUN of go test is checked.
func runBuildStage(t *testing.T, d *fnbuild.Dockerfile, dir string) {
	t.Helper()
	runs, err := fnbuild.RunBuildStage(d, dir)
	for _, r := range runs {
		t.Logf("RUN %s: %s", r.Command, r.Took.Round(100*time.Millisecond))
		if strings.Contains(r.Command, "go test ") {
			checkTestsRan(t, r.Output)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

// checkTestsRan checks go test's output: the template's main and the
// handler (the root package of function/) were tested, and the
// repository's internal packages were not.
func checkTestsRan(t *testing.T, out string) {
	t.Helper()
	for _, pkg := range []string{"handler", "github.com/openfaas/mailbox"} {
		if !strings.Contains(out, "ok  \t"+pkg+"\t") {
			t.Errorf("go test did not pass the tests of %s:\n%s", pkg, out)
		}
	}
	if strings.Contains(out, "github.com/openfaas/mailbox/internal/") {
		t.Errorf("go test ran the internal packages' tests:\n%s", out)
	}
}

// checkStatic fails unless bin is a statically linked ELF executable: no
// interpreter, no shared libraries, as the distroless static image needs.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (%s)", bin, p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %q", bin, libs)
	}
}

// goBuild builds pkg of the module in dir to out.
func goBuild(t *testing.T, dir, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// overrides returns env with the values of over put in.
func overrides(env, over map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

// startFunction runs a function's binary as of-watchdog would: with its
// environment and upstream_url, here on a free port. It returns once the
// function listens.
func startFunction(t *testing.T, name, bin string, env map[string]string) (*proc.Process, string) {
	t.Helper()
	addr, err := proc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	env = overrides(env, map[string]string{"upstream_url": "http://" + addr})
	p := startProcess(t, name, bin, proc.Environ(env))
	if err := proc.WaitListening(addr, 15*time.Second, p); err != nil {
		t.Fatalf("%s does not listen on %s: %v\n%s", name, addr, err, p.Output())
	}
	return p, addr
}

// startProcess starts a program with exactly the environment env; it is
// stopped, by its pid, if it is still running when the test ends, and its
// output is logged if the test failed or is verbose.
func startProcess(t *testing.T, name, bin string, env []string, args ...string) *proc.Process {
	t.Helper()
	p, err := proc.Start(name, bin, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Stop(15 * time.Second)
		if t.Failed() || testing.Verbose() {
			t.Logf("%s output:\n%s", name, p.Output())
		}
	})
	return p
}

// logField waits for p's JSON log line with msg and returns its field.
func logField(t *testing.T, p *proc.Process, msg, field string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	v, err := p.LogField(ctx, msg, field)
	if err != nil {
		t.Fatalf("%v:\n%s", err, p.Output())
	}
	return v
}

// gateway stands in for the OpenFaaS gateway: it proxies
// /function/<name>/<path> to /<path> of the function's process and
// records each function's answers.
type gateway struct {
	srv *httptest.Server

	mu     sync.Mutex
	routes map[string]string // name: host:port
	seen   []call
}

// call is one answer of a function through the gateway.
type call struct {
	function, retries string
	status            int
}

func startGateway(t *testing.T) *gateway {
	t.Helper()
	g := &gateway{routes: map[string]string{}}
	g.srv = httptest.NewServer(g)
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) route(name, addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.routes[name] = addr
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/function/")
	name, fnPath, _ := strings.Cut(rest, "/")
	g.mu.Lock()
	addr := g.routes[name]
	g.mu.Unlock()
	target, err := url.Parse("/" + fnPath)
	if !ok || addr == "" || err != nil {
		http.Error(w, "error finding function "+name, http.StatusNotFound)
		return
	}
	retries := r.Header.Get("X-Retries")
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", addr
			pr.Out.URL.Path, pr.Out.URL.RawPath = target.Path, target.RawPath
			pr.Out.Host = addr
		},
		ModifyResponse: func(res *http.Response) error {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.seen = append(g.seen, call{function: name, retries: retries, status: res.StatusCode})
			return nil
		},
	}
	proxy.ServeHTTP(w, r)
}

func (g *gateway) calls() []call {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]call(nil), g.seen...)
}

// answered reports whether function answered status to a request with
// X-Retries retries.
func (g *gateway) answered(function, retries string, status int) bool {
	for _, c := range g.calls() {
		if c.function == function && c.retries == retries && c.status == status {
			return true
		}
	}
	return false
}

// rateLimitedAPI answers its first call 429 with Retry-After: 1, and 200
// after that.
type rateLimitedAPI struct {
	srv *httptest.Server

	mu     sync.Mutex
	bodies []string
}

func startAPI(t *testing.T) *rateLimitedAPI {
	t.Helper()
	a := &rateLimitedAPI{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.bodies = append(a.bodies, string(b))
		n := len(a.bodies)
		a.mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = io.WriteString(w, "done")
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *rateLimitedAPI) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.bodies...)
}

func waitHealthy(t *testing.T, u string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(u)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 (last: %v)", u, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, b
}

func get(t *testing.T, u string) int {
	t.Helper()
	res, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	res.Body.Close()
	return res.StatusCode
}
