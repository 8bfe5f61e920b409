// Package service assembles the mailbox's parts from a validated config, so
// that the function, the connector and the standalone server are thin
// mains that wire the same pieces the same way.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	provider "github.com/openfaas/faas-provider/auth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/openfaas/mailbox/internal/api"
	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/catalog"
	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/diskspace"
	"github.com/openfaas/mailbox/internal/dispatch"
	"github.com/openfaas/mailbox/internal/httpserver"
	"github.com/openfaas/mailbox/internal/invoke"
	"github.com/openfaas/mailbox/internal/limit"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/status"
	"github.com/openfaas/mailbox/internal/ui"
)

// UserAgent identifies the mailbox to functions.
const UserAgent = "openfaas-mailbox"

// publishTimeout bounds the wait for the broker to acknowledge a write.
const publishTimeout = 5 * time.Second

// A delivery may wait for an unreachable gateway for up to the
// invocation's timeout, then needs that timeout again for the call and
// publishTimeout to store the outcome: handlerTimeout bounds the whole.
func handlerTimeout(cfg config.Config) time.Duration { return 2*cfg.UpstreamTimeout + publishTimeout }

// Registry returns a metrics registry with the Go runtime and process
// collectors, the one every process serves at /metrics.
func Registry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	err := errors.Join(
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	)
	return reg, err
}

// OpenQueue opens the configured backend. It does not wait for the broker:
// the queue connects, and reconnects, in the background. With statuses
// off it records none and sets no quota (queue.WithoutStatuses).
func OpenQueue(cfg config.Config, reg prometheus.Registerer, logger *slog.Logger) (queue.Queue, error) {
	return openQueue(cfg, reg, logger, "api")
}

// openQueue is OpenQueue for a process doing role (api, connector): on
// NATS Streaming, part of its default client id.
func openQueue(cfg config.Config, reg prometheus.Registerer, logger *slog.Logger, role string) (queue.Queue, error) {
	if cfg.NATSURL == "" {
		return nil, errors.New("config: nats_url: required")
	}
	common := queue.Options{
		URL:             cfg.NATSURL,
		CredentialsFile: cfg.NATSCredentialsFile,
		Prefix:          cfg.ChannelPrefix,
		MaxInflight:     cfg.MaxInflight,
		HandlerTimeout:  handlerTimeout(cfg),
		PublishTimeout:  publishTimeout,
		StatusRetention: cfg.StatusRetention,
		Logger:          logger,
		Registerer:      reg,
		Quota: queue.Quota{
			MaxWaiting:            cfg.MaxWaiting,
			MaxWaitingBytes:       cfg.MaxWaitingBytes,
			MaxWaitingPerFunction: cfg.MaxWaitingPerFunction,
		},
	}
	if !cfg.Statuses {
		// The quotas count statuses (config.Load refuses one set with
		// statuses off).
		common.Quota = queue.Quota{}
	}
	var (
		q   queue.Queue
		err error
	)
	switch cfg.Backend {
	case "stan":
		q, err = stan.Open(stan.Options{Options: common, ClusterID: cfg.NATSClusterID, ClientID: cfg.NATSClientID, Role: role})
	case "jetstream":
		q, err = jetstream.Open(jetstream.Options{
			Options:             common,
			Stream:              cfg.JetStreamStream,
			Consumer:            cfg.JetStreamConsumer,
			Replicas:            cfg.JetStreamReplicas,
			DeadLetterMaxAge:    cfg.DeadLetterMaxAge,
			StatusesPerFunction: cfg.MaxStatusesPerFunction,
		})
	default:
		return nil, fmt.Errorf("config: backend: %q is not supported", cfg.Backend)
	}
	if err != nil {
		return nil, err
	}
	if !cfg.Statuses {
		if role == "api" {
			logger.Warn("statuses=false: no quota bounds the messages waiting (max_waiting, max_waiting_bytes and max_waiting_per_function are off, the defaults too); only the broker's storage limit does")
		}
		return queue.WithoutStatuses(q), nil
	}
	return q, nil
}

// Defaults are the delivery settings of cfg.
func Defaults(cfg config.Config) delivery.Defaults {
	return delivery.Defaults{
		MaxRetries:          cfg.DefaultMaxRetries,
		Delay:               cfg.DefaultDelay,
		Backoff:             cfg.DefaultBackoff,
		TTL:                 cfg.DefaultTTL,
		DeadLetterFunction:  cfg.DeadLetterFunction,
		MaxRetriesLimit:     cfg.MaxRetriesLimit,
		MaxDelay:            cfg.MaxDelay,
		MinRetryDelay:       cfg.MinRetryDelay,
		RetryCodes:          cfg.RetryCodes,
		NoSuchFunctionGrace: cfg.NoSuchFunctionGrace,
		CallbackMaxRetries:  cfg.CallbackMaxRetries,
		CallbackDelay:       cfg.CallbackDelay,
	}
}

// API returns the mailbox's HTTP API, served by mailbox-fn and the
// standalone server: requeue, message status and, when a token is
// configured, the management API and the web page, serving store (which
// the caller runs; nil without a token).
func API(cfg config.Config, q queue.Queue, reg *prometheus.Registry, store *deadletter.Store, logger *slog.Logger) (http.Handler, error) {
	token, err := auth.Load(cfg.SecretMountPath, cfg.AuthTokenSecret)
	if err != nil {
		return nil, fmt.Errorf("config: auth_token_secret: %w", err)
	}
	auth.WarnIfWeak(token, logger)
	targets, callbacks, err := Policies(cfg)
	if err != nil {
		return nil, err
	}
	o := api.Options{
		Queue:           q,
		Defaults:        Defaults(cfg),
		MaxBodyBytes:    cfg.MaxBodyBytes,
		KeepCredentials: cfg.KeepCredentials,
		StatusRetention: cfg.StatusRetention,
		Targets:         targets,
		Callbacks:       callbacks,
		Registerer:      reg,
		Gatherer:        reg,
		Logger:          logger,
	}
	if cfg.StoreDir != "" && cfg.DataDirReserveBytes > 0 {
		// The embedded server's store: refuse requeues before its file
		// system fills (diskspace explains why).
		o.Storage = diskspace.Guard{Dir: cfg.StoreDir, Reserve: cfg.DataDirReserveBytes}.Check
	}
	if token != nil {
		if store == nil {
			return nil, errors.New("service: a token is configured but no dead-letter store is given")
		}
		guard, err := auth.NewGuard(token, reg, auth.WithWindow(cfg.SignatureWindow))
		if err != nil {
			return nil, err
		}
		o.Guard, o.RequeueAuth, o.MetricsAuth, o.DeadLetters = guard, cfg.RequeueAuth, cfg.MetricsAuth, store
		if o.UI, err = ui.New(ui.Options{
			Store: store, Waiting: q.Waiting, Token: token, Guard: guard, Logger: logger,
			Sessions: token.Sessions(cfg.SessionTTL, nil),
		}); err != nil {
			return nil, err
		}
	}
	return api.New(o)
}

// Ops returns what the connector serves, /healthz and /metrics; with
// metrics_auth, /metrics needs the token.
func Ops(cfg config.Config, q queue.Queue, reg *prometheus.Registry) (http.Handler, error) {
	if !cfg.MetricsAuth {
		return api.Ops(q, reg, nil), nil
	}
	token, err := auth.Load(cfg.SecretMountPath, cfg.AuthTokenSecret)
	if err != nil {
		return nil, fmt.Errorf("config: auth_token_secret: %w", err)
	}
	if token == nil {
		// config.Load refuses this; a Config built otherwise must not
		// serve the metrics open when asked not to.
		return nil, errors.New("config: metrics_auth: true needs a token: set auth_token_secret")
	}
	guard, err := auth.NewGuard(token, reg)
	if err != nil {
		return nil, err
	}
	return api.Ops(q, reg, guard), nil
}

// HTTP is the bounds of the server on listen (see httpserver).
func HTTP(cfg config.Config) httpserver.Options {
	return httpserver.Options{ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout}
}

// Management reports whether cfg turns the management API and the web
// page on: whether an API process needs a dead-letter store.
func Management(cfg config.Config) bool { return cfg.AuthTokenSecret != "" }

// Policies are what the mailbox may deliver to (allow_functions and
// allow_namespaces, never mailbox_function) and where X-Callback-Url may
// point: the gateway's functions among those targets, and
// callback_allow_hosts.
func Policies(cfg config.Config) (*auth.Targets, *callback.Policy, error) {
	targets, err := auth.NewTargets(cfg.AllowFunctions, cfg.AllowNamespaces, cfg.MailboxFunction)
	if err != nil {
		return nil, nil, err
	}
	callbacks, err := callback.New(callback.Options{GatewayURL: cfg.GatewayURL, AllowHosts: cfg.CallbackAllowHosts, Functions: targets.Check})
	if err != nil {
		return nil, nil, err
	}
	return targets, callbacks, nil
}

// DeadLetters returns the store of q's dead letters: the connector runs
// one to apply retention and the limit, and an API process with the
// management API one to serve them.
func DeadLetters(cfg config.Config, q queue.Queue, reg prometheus.Registerer, logger *slog.Logger) (*deadletter.Store, error) {
	targets, _, err := Policies(cfg)
	if err != nil {
		return nil, err
	}
	rec, err := status.NewRecorder(q, reg, logger)
	if err != nil {
		return nil, err
	}
	return deadletter.New(deadletter.Options{
		Queue:      q,
		Retention:  cfg.DeadLetterMaxAge,
		Limit:      cfg.DeadLetterLimit,
		ReplayRate: cfg.ReplayRate.PerSecond(),
		Allow:      targets.CheckMessage,
		Status:     rec,
		Registerer: reg,
		Logger:     logger,
	})
}

// Dispatcher returns the connector's delivery loop: it invokes functions
// through the gateway, reads the functions and their annotations from the
// gateway's API with the gateway's credentials (which also tells when an
// unreachable gateway answers again), and shares the functions' limits
// with the other connectors over NATS.
func Dispatcher(cfg config.Config, q queue.Queue, reg prometheus.Registerer, logger *slog.Logger) (*dispatch.Dispatcher, error) {
	creds, err := Credentials(cfg)
	if err != nil {
		return nil, err
	}
	// The connector signs what it sends with the same token the API
	// checks (auth_token_secret), so functions can verify it came from
	// the mailbox (requeue.Verify).
	token, err := auth.Load(cfg.SecretMountPath, cfg.AuthTokenSecret)
	if err != nil {
		return nil, fmt.Errorf("config: auth_token_secret: %w", err)
	}
	var signer dispatch.Signer
	if token != nil {
		signer = token
	}
	functions, err := catalog.New(catalog.Options{
		GatewayURL:  cfg.GatewayURL,
		Credentials: creds,
		Client:      invoke.NewClient(5*time.Second, 1),
		Refresh:     cfg.FunctionRefresh,
		Logger:      logger,
		Registerer:  reg,
	})
	if err != nil {
		return nil, err
	}
	limiter, err := limit.New(limit.Options{
		URL:             cfg.NATSURL,
		CredentialsFile: cfg.NATSCredentialsFile,
		Prefix:          cfg.ChannelPrefix,
		// A replica gone silent may still have calls running until their
		// handler timeout: its share is not taken over before.
		MaxCall:   handlerTimeout(cfg) + limitHeartbeat,
		Heartbeat: limitHeartbeat,
		// Rate slots are reserved this far ahead by the replicas known
		// then: a connector that starts waits about this long for its
		// first slot, and a backlog beyond it is stored again later.
		Horizon:    limitHorizon,
		Logger:     logger,
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	probe := func(ctx context.Context) error {
		// Reload, not a lookup: a lookup may be answered from the list
		// read a moment ago, before the gateway went away.
		err := functions.Reload(ctx)
		var urlErr *url.Error
		if err != nil && !errors.As(err, &urlErr) {
			// The gateway answered, if not as hoped (say, credentials
			// refused): it is reachable, so deliveries may go on.
			logger.Warn("gateway function lookup failed", "error", err)
			return nil
		}
		return err
	}
	targets, callbacks, err := Policies(cfg)
	if err != nil {
		return nil, err
	}
	invoker := invoke.New(cfg.GatewayURL, invoke.NewClient(cfg.UpstreamTimeout, cfg.MaxInflight), UserAgent).
		WithCallbackClient(callbacks.Client(cfg.UpstreamTimeout, cfg.CallbackMaxInflight))
	return dispatch.New(dispatch.Options{
		Queue:             q,
		Invoker:           invoker,
		Targets:           targets,
		Callbacks:         callbacks,
		CallbackSlots:     cfg.CallbackMaxInflight,
		Functions:         functions,
		Limiter:           limiter,
		Defaults:          Defaults(cfg),
		CallbackBodyLimit: int(cfg.MaxBodyBytes),
		Probe:             probe,
		CallBudget:        cfg.UpstreamTimeout + publishTimeout,
		Signer:            signer,
		Registerer:        reg,
		Logger:            logger,
	})
}

// limitHeartbeat is how often connectors tell each other they share the
// limits; every replica must use the same.
const limitHeartbeat = time.Second

// limitHorizon: see limit.Options.Horizon.
const limitHorizon = 10 * time.Second

// Credentials reads the gateway's basic-auth credentials from
// secret_mount_path when basic_auth is set, and nil otherwise.
func Credentials(cfg config.Config) (*provider.BasicAuthCredentials, error) {
	if !cfg.BasicAuth {
		return nil, nil
	}
	reader := provider.ReadBasicAuthFromDisk{SecretMountPath: cfg.SecretMountPath}
	creds, err := reader.Read()
	if err != nil {
		return nil, fmt.Errorf("config: secret_mount_path: basic_auth is set but the credentials cannot be read: %w", err)
	}
	return creds, nil
}

// Serve serves h on addr, bounded by o, until ctx ends, then stops
// accepting requests and waits up to grace for those in flight. ready, if
// not nil, receives the bound address once the listener is open.
func Serve(ctx context.Context, addr string, h http.Handler, o httpserver.Options, grace time.Duration, ready func(addr string)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := httpserver.New(h, o)
	if ready != nil {
		ready(ln.Addr().String())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	return nil
}

// Run serves h on cfg.Listen, bounded by HTTP(cfg), delivers messages
// with c's dispatcher and keeps c's dead letters until ctx ends or one
// fails: the first to fail stops the others. On shutdown the server stops
// accepting first, then deliveries in flight finish. ready, if not nil,
// gets the bound address.
func Run(ctx context.Context, cfg config.Config, h http.Handler, c *Connector, ready func(addr string)) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return Serve(ctx, cfg.Listen, h, HTTP(cfg), 10*time.Second, ready) })
	g.Go(func() error { return c.Dispatcher.Run(ctx) })
	g.Go(func() error { return c.DeadLetters.Run(ctx) })
	return g.Wait()
}

// SetDefaultLogger makes logger the process's default. connector-sdk logs
// every invocation through the standard logger; with slog as the default
// that becomes debug output.
func SetDefaultLogger(logger *slog.Logger) {
	slog.SetDefault(logger)
	slog.SetLogLoggerLevel(slog.LevelDebug)
}

// Connector is what a process that delivers needs: its metrics registry,
// the queue, the dispatcher and the dead-letter store that keeps the dead
// letters within their retention and limit. Close the queue when done.
type Connector struct {
	Registry    *prometheus.Registry
	Queue       queue.Queue
	Dispatcher  *dispatch.Dispatcher
	DeadLetters *deadletter.Store
}

// OpenConnector assembles a Connector from cfg, for the connector and the
// standalone server.
func OpenConnector(cfg config.Config, logger *slog.Logger) (*Connector, error) {
	reg, err := Registry()
	if err != nil {
		return nil, err
	}
	q, err := openQueue(cfg, reg, logger, "connector")
	if err != nil {
		return nil, err
	}
	d, err := Dispatcher(cfg, q, reg, logger)
	if err != nil {
		_ = q.Close()
		return nil, err
	}
	store, err := DeadLetters(cfg, q, reg, logger)
	if err != nil {
		_ = q.Close()
		return nil, err
	}
	return &Connector{Registry: reg, Queue: q, Dispatcher: d, DeadLetters: store}, nil
}
