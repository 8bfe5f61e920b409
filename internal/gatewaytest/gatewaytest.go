// Package gatewaytest is a stand-in for the OpenFaaS gateway, for tests and
// the benchmark command. Functions are deployed on it with a handler and
// annotations; it lists them on the gateway's API, as the connector reads
// them (GET /system/namespaces, then /system/functions?namespace=<ns>), and
// routes /function/<name>[.<namespace>][/rest] to each one's handler with
// the prefix removed, as OpenFaaS passes a function only the rest of the
// path. It does not import testing, so the benchmark command can use it.
package gatewaytest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openfaas/faas-provider/types"

	"github.com/openfaas/mailbox/internal/names"
)

// Namespace is where a function deployed without a namespace goes, the
// default of faas-netes and faasd. /system/namespaces always lists it.
const Namespace = "openfaas-fn"

// restartWait bounds how long Restart waits for the address to be free.
const restartWait = 5 * time.Second

// Options configure Start.
type Options struct {
	// User and Password, when User is set, are the basic-auth credentials
	// that /system/* requires, as a gateway with basic_auth on. Function
	// routes never require any, as on OpenFaaS CE.
	User, Password string
}

// Gateway is a stand-in gateway listening on 127.0.0.1. Its methods are
// safe for concurrent use.
type Gateway struct {
	addr string
	opts Options

	lookups atomic.Int64
	denied  atomic.Int64

	mu  sync.Mutex
	srv *http.Server            // nil while stopped
	fns map[string]deployedFunc // by name.namespace
}

type deployedFunc struct {
	name, namespace string
	h               http.Handler
	annotations     map[string]string
}

// Start serves a gateway with no functions on a free port of 127.0.0.1.
// Stop it when done.
func Start(o Options) (*Gateway, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("gatewaytest: %w", err)
	}
	g := &Gateway{addr: ln.Addr().String(), opts: o, fns: map[string]deployedFunc{}}
	g.serve(ln)
	return g, nil
}

// URL is the gateway's base URL, the mailbox's gateway_url; it stays the
// same across Restart.
func (g *Gateway) URL() string { return "http://" + g.addr }

func (g *Gateway) serve(ln net.Listener) {
	srv := &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second}
	g.mu.Lock()
	g.srv = srv
	g.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// Stop closes the listener and every connection, as a gateway that went
// down; calls in flight see their connection closed. It may be called
// more than once.
func (g *Gateway) Stop() {
	g.mu.Lock()
	srv := g.srv
	g.srv = nil
	g.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// Restart serves again on the same address after Stop, waiting up to 5 s
// for the address to be free. The deployed functions are kept.
func (g *Gateway) Restart() error {
	g.mu.Lock()
	running := g.srv != nil
	g.mu.Unlock()
	if running {
		return errors.New("gatewaytest: Restart while running")
	}
	deadline := time.Now().Add(restartWait)
	for {
		ln, err := net.Listen("tcp", g.addr)
		if err == nil {
			g.serve(ln)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gatewaytest: restart on %s: %w", g.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Deploy adds the function name ("fn" or "fn.namespace"; without a
// namespace it is in Namespace), or replaces it, with the handler its
// calls go to and its annotations. A nil h answers 200 with no body.
// It panics on a name no function can have.
func (g *Gateway) Deploy(name string, h http.Handler, annotations map[string]string) {
	fn, ns := split(name)
	if !names.Valid(name) {
		panic(fmt.Sprintf("gatewaytest: Deploy(%q): not <function> or <function>.<namespace>", name))
	}
	if h == nil {
		h = http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fns[fn+"."+ns] = deployedFunc{name: fn, namespace: ns, h: h, annotations: maps.Clone(annotations)}
}

// Remove takes the function name away; its routes then answer 404.
func (g *Gateway) Remove(name string) {
	fn, ns := split(name)
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.fns, fn+"."+ns)
}

// Lookups counts the requests to /system/*, refused ones included.
func (g *Gateway) Lookups() int64 { return g.lookups.Load() }

// Denied counts the requests to /system/* refused for their credentials.
func (g *Gateway) Denied() int64 { return g.denied.Load() }

// ServeHTTP serves the gateway's routes.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(path, "/system/"):
		g.system(w, r, path)
	case strings.HasPrefix(path, "/function/"):
		g.function(w, r, strings.TrimPrefix(path, "/function/"))
	default:
		http.NotFound(w, r)
	}
}

// system answers the gateway's API calls that list functions.
func (g *Gateway) system(w http.ResponseWriter, r *http.Request, path string) {
	g.lookups.Add(1)
	if g.opts.User != "" {
		if u, p, ok := r.BasicAuth(); !ok || u != g.opts.User || p != g.opts.Password {
			g.denied.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="Restricted"`)
			http.Error(w, "invalid credentials", http.StatusUnauthorized)
			return
		}
	}
	switch path {
	case "/system/namespaces":
		writeJSON(w, g.namespaces())
	case "/system/functions":
		ns := r.URL.Query().Get("namespace")
		if ns == "" {
			ns = Namespace
		}
		writeJSON(w, g.list(ns))
	default:
		http.NotFound(w, r)
	}
}

func (g *Gateway) namespaces() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := []string{Namespace}
	for _, f := range g.fns {
		if !slices.Contains(out, f.namespace) {
			out = append(out, f.namespace)
		}
	}
	slices.Sort(out)
	return out
}

func (g *Gateway) list(namespace string) []types.FunctionStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := []types.FunctionStatus{}
	for _, f := range g.fns {
		if f.namespace != namespace {
			continue
		}
		st := types.FunctionStatus{
			Name: f.name, Namespace: f.namespace, Image: "gatewaytest/" + f.name,
			Replicas: 1, AvailableReplicas: 1,
		}
		if f.annotations != nil {
			a := maps.Clone(f.annotations)
			st.Annotations = &a
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b types.FunctionStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// function routes rest, "<name>[.<namespace>][/path]" as escaped, to the
// function with "/path" as the request's path.
func (g *Gateway) function(w http.ResponseWriter, r *http.Request, rest string) {
	name, path, _ := strings.Cut(rest, "/")
	fn, ns := split(name)
	g.mu.Lock()
	f, ok := g.fns[fn+"."+ns]
	g.mu.Unlock()
	if !ok {
		http.Error(w, "error finding function "+name, http.StatusNotFound)
		return
	}
	u, err := url.Parse("/" + path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = u.Path, u.RawPath
	r2.RequestURI = r2.URL.RequestURI()
	f.h.ServeHTTP(w, r2)
}

// split returns the function and namespace of "fn" or "fn.namespace".
func split(name string) (fn, namespace string) {
	fn, namespace, dotted := strings.Cut(name, ".")
	if !dotted {
		namespace = Namespace
	}
	return fn, namespace
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
