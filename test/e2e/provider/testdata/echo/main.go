// Command echo is the provider test's function: like the template's main it
// serves on the host:port of upstream_url, and it answers every request
// with what it saw, as JSON: the request, the environment variables named
// by ?env= and the secret files named by ?secret=.
//
// ECHO_GATE=<file> makes it wait for the file before it listens, so a test
// can see the function deployed but not yet ready. ECHO_IGNORE_TERM=1
// makes it ignore SIGTERM, so a test can see the provider's SIGKILL.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Reply is what echo answers; the test decodes the same shape.
type Reply struct {
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

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func run() error {
	u, err := url.Parse(os.Getenv("upstream_url"))
	if err != nil || u.Host == "" {
		return fmt.Errorf("upstream_url %q: want http://host:port", os.Getenv("upstream_url"))
	}
	if os.Getenv("ECHO_IGNORE_TERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	if gate := os.Getenv("ECHO_GATE"); gate != "" {
		fmt.Println("echo: waiting for", gate)
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	fmt.Printf("echo: listening on %s pid %d\n", u.Host, os.Getpid())
	return http.ListenAndServe(u.Host, http.HandlerFunc(echo))
}

func echo(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	reply := Reply{
		PID:              os.Getpid(),
		Method:           r.Method,
		Path:             r.URL.Path,
		Query:            r.URL.RawQuery,
		Header:           r.Header,
		TransferEncoding: r.TransferEncoding,
		Body:             string(body),
		Env:              map[string]string{},
		Secrets:          map[string]string{},
	}
	q := r.URL.Query()
	for _, k := range q["env"] {
		reply.Env[k] = os.Getenv(k)
	}
	for _, name := range q["secret"] {
		v, err := os.ReadFile(filepath.Join(os.Getenv("secret_mount_path"), name))
		if err != nil {
			v = []byte("error: " + err.Error())
		}
		reply.Secrets[name] = string(v)
	}
	fmt.Printf("echo: %s %s\n", r.Method, r.URL.Path)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(reply)
}
