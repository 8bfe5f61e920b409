package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openfaas/faas-provider/types"

	"github.com/openfaas/mailbox/test/internal/proc"
)

const (
	echoImage = "example.com/echo:1"
	grace     = time.Second
)

// bed is the one Provider of the test binary: bootstrap.Serve runs once
// per process, so every test (and every -count) shares it.
var (
	bed    *Provider
	logged = &syncBuffer{}
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "provider-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	// The function is a real executable, built the way the bed builds
	// the template's handler.
	echo := filepath.Join(dir, "echo")
	build := exec.Command("go", "build", "-o", echo, "./testdata/echo")
	build.Env = append(os.Environ(), "GOWORK=off") // as the bed builds
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building testdata/echo: %v\n%s", err, out)
		return 1
	}

	port, err := proc.FreePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bed, err = New(Options{
		Port:           port,
		Images:         map[string]string{echoImage: echo},
		Secrets:        map[string]string{"api-key": "s3cret"},
		Logs:           logged,
		RestartBackoff: 100 * time.Millisecond,
		StopGrace:      grace,
		Timeout:        10 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := bed.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	code := m.Run()

	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bed.Close(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		return 1
	}
	return code
}

func TestAPI(t *testing.T) {
	res, _ := call(t, http.MethodGet, "/healthz", nil)
	wantStatus(t, res, http.StatusOK)

	var info types.ProviderInfo
	getJSON(t, "/system/info", &info)
	if info.Name != "mailbox-bed" || info.Orchestration != "process" {
		t.Errorf("info = %+v, want provider mailbox-bed, orchestration process", info)
	}

	var namespaces []string
	getJSON(t, "/system/namespaces", &namespaces)
	if len(namespaces) != 1 || namespaces[0] != "openfaas-fn" {
		t.Errorf("namespaces = %v, want [openfaas-fn]", namespaces)
	}

	name := fmt.Sprintf("new-%d", time.Now().UnixNano())
	res, body := call(t, http.MethodPost, "/system/secrets", types.Secret{Name: name, Value: "v"})
	wantStatus(t, res, http.StatusCreated, body)
	res, body = call(t, http.MethodPost, "/system/secrets", types.Secret{Name: name, Value: "v"})
	wantStatus(t, res, http.StatusConflict, body)
	var secrets []types.Secret
	getJSON(t, "/system/secrets", &secrets)
	seen := map[string]bool{}
	for _, s := range secrets {
		seen[s.Name] = true
		if s.Value != "" || s.RawValue != nil {
			t.Errorf("secret list shows the value of %s", s.Name)
		}
	}
	if !seen["api-key"] || !seen[name] {
		t.Errorf("secrets = %+v, want api-key and %s", secrets, name)
	}
	res, body = call(t, http.MethodDelete, "/system/secrets", types.Secret{Name: name})
	wantStatus(t, res, http.StatusOK, body)

	res, body = call(t, http.MethodGet, "/system/functions?namespace=other", nil)
	wantStatus(t, res, http.StatusBadRequest, body)
}

func TestSecondStartFails(t *testing.T) {
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if _, err := p.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "only run once") {
		t.Fatalf("second Start = %v, want an error saying bootstrap runs once", err)
	}
}

func TestDeployRefusesUnknownImageAndSecret(t *testing.T) {
	for _, tc := range []struct {
		spec types.FunctionDeployment
		want string
	}{
		{types.FunctionDeployment{Service: "nope", Image: "example.com/nope:1"}, `image "example.com/nope:1" is not known`},
		{types.FunctionDeployment{Service: "nope", Image: echoImage, Secrets: []string{"missing"}}, "secrets [missing] not found"},
		{types.FunctionDeployment{Service: "nope", Image: echoImage, Namespace: "other"}, `namespace "other" not supported`},
		{types.FunctionDeployment{Service: "../nope", Image: echoImage}, "not a valid function name"},
	} {
		res, body := call(t, http.MethodPost, "/system/functions", tc.spec)
		wantStatus(t, res, http.StatusBadRequest, body)
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("deploy %+v answered %q, want it to say %q", tc.spec, body, tc.want)
		}
	}
	if bed.Addr("nope") != "" {
		t.Errorf("a refused deployment has an address")
	}
	res, body := call(t, http.MethodPut, "/system/functions", types.FunctionDeployment{Service: "absent", Image: echoImage})
	wantStatus(t, res, http.StatusNotFound, body)
}

func TestFunctionLifecycle(t *testing.T) {
	const name = "echo"
	t.Cleanup(func() { remove(t, name) })

	// The gate keeps the process from listening: deployed, not ready.
	gate := filepath.Join(t.TempDir(), "gate")
	spec := types.FunctionDeployment{
		Service:     name,
		Image:       echoImage,
		Namespace:   "openfaas-fn",
		EnvProcess:  "./handler",
		EnvVars:     map[string]string{"GREETING": "hello", "ECHO_GATE": gate},
		Secrets:     []string{"api-key"},
		Labels:      &map[string]string{"com.openfaas.scale.zero": "true"},
		Annotations: &map[string]string{"topic": "mailbox"},
	}
	res, body := call(t, http.MethodPost, "/system/functions", spec)
	wantStatus(t, res, http.StatusAccepted, body)

	st := status(t, name)
	if st.Replicas != 1 || st.AvailableReplicas != 0 {
		t.Fatalf("before listening: replicas %d available %d, want 1 and 0", st.Replicas, st.AvailableReplicas)
	}
	res, body = call(t, http.MethodGet, "/function/echo/", nil)
	wantStatus(t, res, http.StatusServiceUnavailable, body)

	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitReady(t, name)

	var list []types.FunctionStatus
	getJSON(t, "/system/functions?namespace=openfaas-fn", &list)
	if len(list) != 1 {
		t.Fatalf("list = %+v, want the one function", list)
	}
	got := list[0]
	if got.Name != name || got.Image != echoImage || got.Namespace != "openfaas-fn" || got.EnvProcess != "./handler" ||
		got.Replicas != 1 || got.AvailableReplicas != 1 ||
		got.Labels == nil || (*got.Labels)["com.openfaas.scale.zero"] != "true" ||
		got.Annotations == nil || (*got.Annotations)["topic"] != "mailbox" {
		t.Errorf("listed %+v, want the deployment, 1 of 1 replicas available", got)
	}

	// The sub-path, query and a chunked body reach the function.
	r := invokeChunked(t, "/function/echo/sub/path?x=1&env=GREETING&env=upstream_url&secret=api-key", "first,", "second")
	if r.Method != http.MethodPost || r.Path != "/sub/path" || !strings.Contains(r.Query, "x=1") {
		t.Errorf("function saw %s %s?%s, want POST /sub/path?x=1...", r.Method, r.Path, r.Query)
	}
	if len(r.TransferEncoding) == 0 || r.TransferEncoding[0] != "chunked" {
		t.Errorf("function got the body with transfer encoding %v, want chunked as sent", r.TransferEncoding)
	}
	if r.Body != "first,second" {
		t.Errorf("function read body %q, want %q", r.Body, "first,second")
	}
	if r.Header.Get("X-Forwarded-For") == "" || r.Header.Get("X-Test") != "yes" {
		t.Errorf("function saw headers %v, want X-Test and X-Forwarded-For", r.Header)
	}
	if r.Env["GREETING"] != "hello" || r.Env["upstream_url"] != "http://"+bed.Addr(name) {
		t.Errorf("function env %v, want GREETING=hello and upstream_url=http://%s", r.Env, bed.Addr(name))
	}
	if r.Secrets["api-key"] != "s3cret" {
		t.Errorf("secret file api-key reads %q, want s3cret", r.Secrets["api-key"])
	}

	// name.namespace is how the gateway names a function's namespace.
	if r := invoke(t, "/function/echo.openfaas-fn/in/ns"); r.Path != "/in/ns" {
		t.Errorf("via echo.openfaas-fn the function saw %s, want /in/ns", r.Path)
	}
	if r := invoke(t, "/function/echo"); r.Path != "/" {
		t.Errorf("with no sub-path the function saw %s, want /", r.Path)
	}
	res, body = call(t, http.MethodGet, "/function/echo.other/", nil)
	wantStatus(t, res, http.StatusServiceUnavailable, body)

	// An update restarts the process with the new spec on the same port.
	addr, pid := bed.Addr(name), r.PID
	spec.EnvVars = map[string]string{"GREETING": "bonjour"}
	res, body = call(t, http.MethodPut, "/system/functions", spec)
	wantStatus(t, res, http.StatusAccepted, body)
	if alive(pid) {
		t.Errorf("pid %d still runs after the update", pid)
	}
	waitReady(t, name)
	r = invoke(t, "/function/echo/?env=GREETING")
	if r.Env["GREETING"] != "bonjour" || r.PID == pid || bed.Addr(name) != addr {
		t.Errorf("after the update: pid %d (was %d), GREETING %q, addr %s (was %s); want a new process, bonjour, same addr",
			r.PID, pid, r.Env["GREETING"], bed.Addr(name), addr)
	}

	// A process that dies is restarted, and counted.
	pid = r.PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, name, "a restart", func() bool { return bed.Restarts(name) == 1 })
	waitReady(t, name)
	if r := invoke(t, "/function/echo/"); r.PID == pid {
		t.Errorf("pid %d still answers after it was killed", pid)
	}
	if !strings.Contains(bed.Logs(name), "exited unexpectedly") {
		t.Errorf("logs do not tell of the exit:\n%s", bed.Logs(name))
	}

	// Scaling to zero stops the process; to one starts it again.
	pid = invoke(t, "/function/echo/").PID
	scale(t, name, 0)
	if st := status(t, name); st.Replicas != 0 || st.AvailableReplicas != 0 || alive(pid) {
		t.Errorf("scaled to 0: replicas %d available %d, pid %d alive %v", st.Replicas, st.AvailableReplicas, pid, alive(pid))
	}
	scale(t, name, 1)
	waitReady(t, name)

	// The output went to Logs, prefixed, and is served as logs.
	if out := logged.String(); !strings.Contains(out, "echo: echo: listening on "+addr) {
		t.Errorf("Logs got:\n%s\nwant lines prefixed %q", out, "echo: ")
	}
	res, body = call(t, http.MethodGet, "/system/logs?name=echo&tail=100", nil)
	wantStatus(t, res, http.StatusOK, body)
	if !strings.Contains(string(body), `"text":"echo: listening on`) {
		t.Errorf("/system/logs answered %s", body)
	}

	// Delete stops the process before it answers.
	pid = invoke(t, "/function/echo/").PID
	remove(t, name)
	if alive(pid) {
		t.Errorf("pid %d still runs after delete", pid)
	}
	getJSON(t, "/system/functions", &list)
	if len(list) != 0 || bed.Addr(name) != "" {
		t.Errorf("after delete: list %+v, addr %q", list, bed.Addr(name))
	}
	res, body = call(t, http.MethodGet, "/function/echo/", nil)
	wantStatus(t, res, http.StatusServiceUnavailable, body)
	res, body = call(t, http.MethodGet, "/system/function/echo", nil)
	wantStatus(t, res, http.StatusNotFound, body)
}

// A process that ignores SIGTERM is killed once the grace is over.
func TestStopKillsAfterGrace(t *testing.T) {
	const name = "stubborn"
	err := bed.Deploy(types.FunctionDeployment{
		Service: name, Image: echoImage, EnvVars: map[string]string{"ECHO_IGNORE_TERM": "1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bed.Delete(name) })
	waitReady(t, name)
	pid := invoke(t, "/function/stubborn/").PID

	start := time.Now()
	if err := bed.Delete(name); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < grace || alive(pid) {
		t.Errorf("delete took %s (grace %s), pid alive %v: want SIGKILL after the grace", took, grace, alive(pid))
	}
	if bed.Restarts(name) != 0 {
		t.Errorf("a stop was counted as a restart")
	}
}

// reply is testdata/echo's answer.
type reply struct {
	PID              int               `json:"pid"`
	Method           string            `json:"method"`
	Path             string            `json:"path"`
	Query            string            `json:"query"`
	Header           http.Header       `json:"header"`
	TransferEncoding []string          `json:"transferEncoding"`
	Body             string            `json:"body"`
	Env              map[string]string `json:"env"`
	Secrets          map[string]string `json:"secrets"`
}

var client = &http.Client{Timeout: 10 * time.Second}

func call(t *testing.T, method, path string, v any) (*http.Response, []byte) {
	t.Helper()
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, bed.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	res, err := client.Do(req)
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

func wantStatus(t *testing.T, res *http.Response, want int, body ...[]byte) {
	t.Helper()
	if res.StatusCode != want {
		t.Fatalf("%s %s = %d %q, want %d", res.Request.Method, res.Request.URL.Path, res.StatusCode, body, want)
	}
}

func getJSON(t *testing.T, path string, v any) {
	t.Helper()
	res, body := call(t, http.MethodGet, path, nil)
	wantStatus(t, res, http.StatusOK, body)
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

func status(t *testing.T, name string) types.FunctionStatus {
	t.Helper()
	var st types.FunctionStatus
	getJSON(t, "/system/function/"+name+"?namespace=openfaas-fn", &st)
	return st
}

func scale(t *testing.T, name string, replicas uint64) {
	t.Helper()
	res, body := call(t, http.MethodPost, "/system/scale-function/"+name,
		types.ScaleServiceRequest{ServiceName: name, Replicas: replicas, Namespace: "openfaas-fn"})
	wantStatus(t, res, http.StatusAccepted, body)
}

func remove(t *testing.T, name string) {
	t.Helper()
	if bed.Addr(name) == "" {
		return
	}
	res, body := call(t, http.MethodDelete, "/system/functions", types.DeleteFunctionRequest{FunctionName: name, Namespace: "openfaas-fn"})
	wantStatus(t, res, http.StatusAccepted, body)
}

func invoke(t *testing.T, path string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, bed.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return decodeReply(t, req)
}

// invokeChunked POSTs the parts as a chunked body, written while the
// request is under way, as the gateway streams bodies.
func invokeChunked(t *testing.T, path string, parts ...string) reply {
	t.Helper()
	pr, pw := io.Pipe()
	go func() {
		for _, p := range parts {
			if _, err := io.WriteString(pw, p); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		pw.Close()
	}()
	req, err := http.NewRequest(http.MethodPost, bed.URL()+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.TransferEncoding = []string{"chunked"}
	req.Header.Set("X-Test", "yes")
	r := decodeReply(t, req)
	if len(req.TransferEncoding) != 1 || req.TransferEncoding[0] != "chunked" || req.ContentLength > 0 {
		t.Errorf("the request was not chunked: %v, length %d", req.TransferEncoding, req.ContentLength)
	}
	return r
}

func decodeReply(t *testing.T, req *http.Request) reply {
	t.Helper()
	res, body := do(t, req)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s = %d %s\nfunction logs:\n%s", req.Method, req.URL.Path, res.StatusCode, body, bed.Logs(strings.Split(strings.Split(req.URL.Path, "/")[2], ".")[0]))
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	return r
}

func waitReady(t *testing.T, name string) {
	t.Helper()
	waitFor(t, name, "availableReplicas 1", func() bool { return status(t, name).AvailableReplicas == 1 })
}

// waitFor polls cond, failing with the function's logs after 10s.
func waitFor(t *testing.T, name, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s after 10s; logs:\n%s", name, what, bed.Logs(name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid is a process (the provider reaps its own).
func alive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// syncBuffer is the functions' Logs, written by their processes'
// goroutines while the tests read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
