// Command handler is the main of the mailbox-go template. It calls the
// function's New once with the process environment, serves the handler on
// the address of upstream_url (of-watchdog's setting, so the two always
// agree), and on SIGTERM drains as of-watchdog does before calling the
// function's close.
//
// In the build context the function's handler folder is function/, which
// configuration.copy turns into the repository's root module
// (github.com/openfaas/mailbox), so the handler is that module's root
// package. go.work, written by the Dockerfile, joins this module and it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	function "github.com/openfaas/mailbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Environ(), os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "handler:", err)
		os.Exit(1)
	}
}

// run is main without the process: it builds the function, serves it
// until ctx ends, drains and closes it. ready, if not nil, gets the
// address once it listens.
func run(ctx context.Context, environ []string, logs io.Writer, ready func(addr string)) error {
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	h, closeFn, err := function.New(environ, logs)
	if err != nil {
		return fmt.Errorf("function: %w", err)
	}
	err = serve(ctx, cfg, h, logs, ready)
	if cerr := closeFn(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("function: close: %w", cerr))
	}
	return err
}

// config is what the main reads from of-watchdog's own settings.
type config struct {
	// listen is the host:port of upstream_url. Defaults to
	// 127.0.0.1:8082, the template's upstream_url.
	listen string
	// grace is how long requests are still served after SIGTERM, while
	// of-watchdog waits for the load balancer to notice it is unhealthy:
	// healthcheck_interval, which defaults to write_timeout as in
	// of-watchdog.
	grace time.Duration
	// drain bounds the wait for requests in flight after that, and each
	// answer (the server's write timeout): write_timeout, 10s by default
	// as in of-watchdog.
	drain time.Duration
	// read bounds reading each request, body included: read_timeout, 10s
	// by default as in of-watchdog.
	read time.Duration
}

const (
	defaultUpstreamURL  = "http://127.0.0.1:8082"
	defaultWriteTimeout = 10 * time.Second
	defaultReadTimeout  = 10 * time.Second
)

// The server's other bounds, as the mailbox's own servers set them
// (internal/httpserver of the mailbox module, of which this module has
// its own copy).
const (
	idleTimeout       = 90 * time.Second
	readHeaderTimeout = 10 * time.Second
	// maxHeaderBytes: larger headers are answered 431.
	maxHeaderBytes = 64 << 10
)

// loadConfig reads upstream_url, read_timeout, write_timeout and
// healthcheck_interval. A value that is set but bad is an error naming
// it, not a default. A zero read or write timeout is refused: of-watchdog
// reads it as no limit, which lets a client that sends or reads one byte
// at a time hold a connection for ever.
func loadConfig(environ []string) (config, error) {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	var errs []error
	c := config{drain: defaultWriteTimeout, read: defaultReadTimeout}

	upstream := env["upstream_url"]
	if upstream == "" {
		upstream = defaultUpstreamURL
	}
	u, err := url.Parse(upstream)
	switch {
	case err != nil || u.Scheme != "http" || u.Port() == "" || u.User != nil:
		errs = append(errs, fmt.Errorf("upstream_url: %q must be http://host:port", upstream))
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "":
		errs = append(errs, fmt.Errorf("upstream_url: %q must have no path or query: the function is served at /", upstream))
	default:
		c.listen = u.Host
	}

	for _, t := range []struct {
		name string
		to   *time.Duration
	}{{"write_timeout", &c.drain}, {"read_timeout", &c.read}} {
		v := env[t.name]
		if v == "" {
			continue
		}
		d, err := parseDuration(v)
		if err == nil && d == 0 {
			err = fmt.Errorf("%q is not above zero", v)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
			continue
		}
		*t.to = d
	}
	c.grace = c.drain
	if v := env["healthcheck_interval"]; v != "" {
		if c.grace, err = parseDuration(v); err != nil {
			errs = append(errs, fmt.Errorf("healthcheck_interval: %w", err))
		}
	}
	return c, errors.Join(errs...)
}

// parseDuration reads a duration as of-watchdog does: whole seconds
// ("10") or a Go duration ("10s", "1m30s").
func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%q is negative", v)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a number of seconds or a duration like 10s", v)
	}
	return d, nil
}

// serve serves h on cfg.listen until ctx ends. Then it keeps serving for
// cfg.grace, because of-watchdog passes SIGTERM on at once but keeps
// sending requests until the function is out of the load balancer, and
// then stops accepting and waits up to cfg.drain for requests in flight.
func serve(ctx context.Context, cfg config, h http.Handler, logs io.Writer, ready func(addr string)) error {
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("upstream_url: %w", err)
	}
	// Bounded as of-watchdog bounds its own server: read_timeout for the
	// request, write_timeout (the drain) for the answer; never unbounded.
	read, write := cfg.read, cfg.drain
	if read <= 0 {
		read = defaultReadTimeout
	}
	if write <= 0 {
		write = defaultWriteTimeout
	}
	srv := &http.Server{
		Handler:           h,
		ReadTimeout:       read,
		WriteTimeout:      write,
		IdleTimeout:       idleTimeout,
		ReadHeaderTimeout: min(readHeaderTimeout, read),
		MaxHeaderBytes:    maxHeaderBytes,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(logs, "handler: serving on %s\n", ln.Addr())
	if ready != nil {
		ready(ln.Addr().String())
	}

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	fmt.Fprintf(logs, "handler: stopping: serving for %s more, then draining for up to %s\n", cfg.grace, cfg.drain)
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-time.After(cfg.grace):
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drain)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("draining: %w", err)
	}
	fmt.Fprintln(logs, "handler: drained")
	return nil
}
