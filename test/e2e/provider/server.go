package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bootstrap "github.com/openfaas/faas-provider"
	"github.com/openfaas/faas-provider/logs"
	"github.com/openfaas/faas-provider/proxy"
	"github.com/openfaas/faas-provider/types"
)

// bootstrapUsed makes a second Start fail instead of panicking: bootstrap
// registers its routes on a package-level router (a second set would be
// shadowed by the first) and its metrics with Prometheus' default
// registry, which panics on the second registration.
var bootstrapUsed atomic.Bool

// Start serves the provider API with bootstrap.Serve on Options.Port and
// returns its URL once /healthz answers. It serves until Close. Only one
// Provider per process can be started.
func (p *Provider) Start(ctx context.Context) (string, error) {
	// bootstrap.Serve calls log.Fatal if it cannot listen, ending the
	// whole process: find a busy port here, where it is an error.
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", p.opts.Port))
	if err != nil {
		return "", fmt.Errorf("provider: %w", err)
	}
	l.Close()
	if !bootstrapUsed.CompareAndSwap(false, true) {
		return "", errors.New("provider: faas-provider's bootstrap.Serve has already run in this process; it can only run once")
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return "", errClosed
	}
	serveCtx, stop := context.WithCancel(context.Background())
	p.stopServe, p.served = stop, make(chan struct{})
	p.mu.Unlock()

	port := p.opts.Port
	config := &types.FaaSConfig{
		TCPPort:      &port,
		ReadTimeout:  p.opts.Timeout,
		WriteTimeout: p.opts.Timeout,
	}
	handlers := p.handlers(*config)
	go func() {
		defer close(p.served)
		bootstrap.Serve(serveCtx, handlers, config)
	}()

	// bootstrap.Serve gives no sign that it is listening: ask it.
	client := &http.Client{Timeout: time.Second}
	for {
		res, err := client.Get(p.URL() + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				p.log.Info("provider API serving", "url", p.URL(), "images", len(p.opts.Images))
				return p.URL(), nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("provider: waiting for the API on port %d: %w", port, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Serve is Start, then serving until ctx ends, when it stops the API and
// returns. The functions keep running until Close.
func (p *Provider) Serve(ctx context.Context) error {
	if _, err := p.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	p.mu.Lock()
	stop, served := p.stopServe, p.served
	p.mu.Unlock()
	stop()
	<-served
	return nil
}

// Close stops the API and every function's process, and waits for them
// or for ctx. The Provider cannot be used again.
func (p *Provider) Close(ctx context.Context) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	functions := make([]*function, 0, len(p.functions))
	for _, f := range p.functions {
		functions = append(functions, f)
	}
	stopServe, served := p.stopServe, p.served
	p.mu.Unlock()

	if stopServe != nil {
		stopServe()
	}
	var wg sync.WaitGroup
	for _, f := range functions {
		wg.Go(f.stop)
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		if served != nil {
			<-served
		}
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("provider: close: %w", ctx.Err())
	}
	if p.ownState {
		return os.RemoveAll(p.stateDir)
	}
	return nil
}

// handlers are the provider API. bootstrap.Serve wraps every one but
// MutateNamespace, Health and Telemetry without a nil check, so all of
// those must be set.
func (p *Provider) handlers(config types.FaaSConfig) *types.FaaSHandlers {
	return &types.FaaSHandlers{
		FunctionProxy:  proxy.NewHandlerFunc(config, resolver{p}, false),
		FunctionLister: p.listHandler,
		DeployFunction: p.deployHandler(p.Deploy),
		UpdateFunction: p.deployHandler(p.Update),
		DeleteFunction: p.deleteHandler,
		FunctionStatus: p.statusHandler,
		ScaleFunction:  p.scaleHandler,
		Secrets:        p.secretsHandler,
		Logs:           logs.NewLogHandlerFunc(logRequester{p}, config.WriteTimeout),
		ListNamespaces: func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, []string{Namespace})
		},
		Info: func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, types.ProviderInfo{
				Name:          Name,
				Orchestration: Orchestration,
				Version:       &types.VersionInfo{Release: "dev", SHA: "dev"},
			})
		},
		Health: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
		},
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers a requestError with its status and anything else,
// which is the provider's fault, with 500.
func (p *Provider) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	if re, ok := errors.AsType[*requestError](err); ok {
		status = re.status
	}
	if status == http.StatusInternalServerError {
		p.log.Error("provider API", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	http.Error(w, err.Error(), status)
}

// decode reads a JSON request body into v.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(v); err != nil {
		return badRequest("invalid request body: %v", err)
	}
	return nil
}

func (p *Provider) listHandler(w http.ResponseWriter, r *http.Request) {
	if err := checkNamespace(r.URL.Query().Get("namespace")); err != nil {
		p.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p.list())
}

func (p *Provider) deployHandler(deploy func(types.FunctionDeployment) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var spec types.FunctionDeployment
		err := decode(w, r, &spec)
		if err == nil {
			err = deploy(spec)
		}
		if err != nil {
			p.writeError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

func (p *Provider) deleteHandler(w http.ResponseWriter, r *http.Request) {
	var req types.DeleteFunctionRequest
	err := decode(w, r, &req)
	if err == nil {
		err = checkNamespace(req.Namespace)
	}
	if err == nil {
		err = p.Delete(req.FunctionName)
	}
	if err != nil {
		p.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// statusHandler is the gateway's replica reader, /system/function/<name>.
func (p *Provider) statusHandler(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/system/function/")
	if err := checkNamespace(r.URL.Query().Get("namespace")); err != nil {
		p.writeError(w, r, err)
		return
	}
	s, ok := p.get(name)
	if !ok {
		p.writeError(w, r, notFound(name))
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (p *Provider) scaleHandler(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/system/scale-function/")
	var req types.ScaleServiceRequest
	err := decode(w, r, &req)
	if err == nil {
		err = checkNamespace(req.Namespace)
	}
	if err == nil {
		err = p.Scale(name, req.Replicas)
	}
	if err != nil {
		p.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// secretsHandler keeps secrets in memory. A function gets a copy of its
// secrets when it is deployed, as with faasd: changing one reaches a
// running function only when it is deployed again.
func (p *Provider) secretsHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		if err := checkNamespace(r.URL.Query().Get("namespace")); err != nil {
			p.writeError(w, r, err)
			return
		}
		p.mu.Lock()
		list := make([]types.Secret, 0, len(p.secrets))
		for name := range p.secrets {
			list = append(list, types.Secret{Name: name, Namespace: Namespace})
		}
		p.mu.Unlock()
		writeJSON(w, http.StatusOK, list)
		return
	}

	var s types.Secret
	err := decode(w, r, &s)
	if err == nil {
		err = checkNamespace(s.Namespace)
	}
	if err == nil && !nameRE.MatchString(s.Name) {
		err = badRequest("secret name %q is not valid (lower-case letters, digits and '-')", s.Name)
	}
	if err != nil {
		p.writeError(w, r, err)
		return
	}
	value := s.RawValue
	if s.Value != "" {
		value = []byte(s.Value)
	}

	p.mu.Lock()
	_, exists := p.secrets[s.Name]
	status := http.StatusOK
	switch {
	case r.Method == http.MethodPost && exists:
		status = http.StatusConflict
	case r.Method != http.MethodPost && !exists:
		status = http.StatusNotFound
	case r.Method == http.MethodDelete:
		delete(p.secrets, s.Name)
	default:
		p.secrets[s.Name] = value
		if r.Method == http.MethodPost {
			status = http.StatusCreated
		}
	}
	p.mu.Unlock()

	if status >= 400 {
		http.Error(w, fmt.Sprintf("secret %s: %s", s.Name, http.StatusText(status)), status)
		return
	}
	w.WriteHeader(status)
}

// resolver gives faas-provider's proxy the function's address. The proxy
// passes the whole {name} of /function/{name}/..., which is
// "<name>.<namespace>" when the caller names the namespace.
type resolver struct{ p *Provider }

func (res resolver) Resolve(name string) (url.URL, error) {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		if err := checkNamespace(name[i+1:]); err != nil {
			return url.URL{}, err
		}
		name = name[:i]
	}
	res.p.mu.Lock()
	f := res.p.functions[name]
	res.p.mu.Unlock()
	switch {
	case f == nil:
		return url.URL{}, notFound(name)
	case !f.ready.Load():
		return url.URL{}, fmt.Errorf("function %s has no ready process", name)
	}
	return url.URL{Scheme: "http", Host: f.addr()}, nil
}

// logRequester serves /system/logs from the lines kept in memory. It does
// not follow: the stream ends with the last line kept.
type logRequester struct{ p *Provider }

func (lr logRequester) Query(ctx context.Context, req logs.Request) (<-chan logs.Message, error) {
	if err := checkNamespace(req.Namespace); err != nil {
		return nil, err
	}
	lr.p.mu.Lock()
	o := lr.p.outputs[req.Name]
	lr.p.mu.Unlock()
	if o == nil {
		return nil, notFound(req.Name)
	}
	lines := o.snapshot()
	if req.Since != nil {
		i := 0
		for i < len(lines) && lines[i].at.Before(*req.Since) {
			i++
		}
		lines = lines[i:]
	}
	if req.Tail > 0 && len(lines) > req.Tail {
		lines = lines[len(lines)-req.Tail:]
	}
	ch := make(chan logs.Message)
	go func() {
		defer close(ch)
		for _, l := range lines {
			m := logs.Message{Name: req.Name, Namespace: Namespace, Instance: req.Name, Timestamp: l.at, Text: l.text}
			select {
			case ch <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
