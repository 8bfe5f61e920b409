// Package config turns the environment (and, for the standalone binary,
// command-line flags) into a validated Config.
//
// Every setting is one row of a single table (see Settings): its name, its
// built-in default, a usage line and a parser. Environment parsing, flags
// and the documentation are all driven by that table, so they cannot drift
// apart.
//
// Settings are named in lower_snake_case, the OpenFaaS convention
// (gateway_url, basic_auth, ...). Names are matched exactly; other variables
// in the environment are ignored.
//
// The empty-value rule: a value that is empty (or only white space) counts
// as unset and the default applies, so `max_inflight=` in a deployment does
// not fail or become zero. The one exception is nats_url, whose empty value
// is meaningful: it asks for an embedded NATS server. Every other value is
// parsed strictly: a typo is an error naming the setting, never a silent
// fallback to the default.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/names"
)

// Config is the validated configuration of the mailbox service.
type Config struct {
	// Backend is the queue backend: "stan" (NATS Streaming) or
	// "jetstream". Defaults to stan.
	Backend string
	// NATSURL is the NATS server, a nats:// or tls:// URL. Empty means the
	// caller embeds a server (the standalone binary does); a binary that
	// cannot embed one must reject it. Defaults to nats://nats.openfaas:4222.
	NATSURL string
	// NATSCredentialsFile is a NATS .creds file; empty for none.
	NATSCredentialsFile string
	// JetStreamStream holds waiting messages; dead letters go to
	// <JetStreamStream>-deadletter. Defaults to mailbox.
	JetStreamStream string
	// JetStreamConsumer is the durable consumer connectors share.
	// Defaults to connector.
	JetStreamConsumer string
	// JetStreamReplicas of each stream, 1..5. Defaults to 1.
	JetStreamReplicas int
	// DeadLetterMaxAge is how long dead letters are kept, on either
	// backend; older ones are removed. Zero keeps them until removed.
	// Defaults to 336h (14 days, Zaqar's dead-letter TTL).
	DeadLetterMaxAge time.Duration
	// DeadLetterLimit is the most dead letters kept per function,
	// 1..10000000; past it the function's oldest are removed, logged and
	// counted. Defaults to 100000.
	DeadLetterLimit int
	// MaxWaiting, MaxWaitingBytes and MaxWaitingPerFunction are the
	// quotas on messages waiting or in flight (queue.Quota): past one a
	// requeue is refused. MaxWaitingPerFunction is at most MaxWaiting.
	// Default to 100000, 1 GiB and 10000.
	MaxWaiting            int
	MaxWaitingBytes       int64
	MaxWaitingPerFunction int
	// ReplayRate is the most dead letters a bulk replay puts back:
	// ReplayRate.N per ReplayRate.Per. Defaults to 50/s.
	ReplayRate Rate
	// Statuses is whether each message's status is recorded. Without them
	// GET /messages/<id> and the waiting counts have nothing to read and
	// the quotas on waiting messages, which count statuses, are off.
	// Defaults to true.
	Statuses bool
	// StatusRetention is how long a message's status is kept after its
	// last step (a waiting message's: after it is due); greater than
	// zero. Defaults to 24h.
	StatusRetention time.Duration
	// MaxStatusesPerFunction is the most statuses JetStream keeps per
	// function name, its newest (jetstream.Options.StatusesPerFunction),
	// 1..1000000. Defaults to 100000.
	MaxStatusesPerFunction int
	// NATSClusterID is the NATS Streaming cluster id ([A-Za-z0-9_-]+).
	// Defaults to faas-cluster.
	NATSClusterID string
	// NATSClientID is this process's NATS Streaming client id
	// ([A-Za-z0-9_-]+), unique per replica; empty for <channel_prefix>-<role>-<host
	// name> (stan.DefaultClientID). Defaults to empty.
	NATSClientID string
	// ChannelPrefix is the prefix of the channel names ([a-z0-9_-]+, no
	// dots: they separate subject tokens). Defaults to mailbox.
	ChannelPrefix string
	// GatewayURL is the OpenFaaS gateway, an http or https URL without a
	// trailing slash. Defaults to http://gateway.openfaas:8080.
	GatewayURL string
	// BasicAuth makes the service read gateway credentials from
	// SecretMountPath. Defaults to false.
	BasicAuth bool
	// SecretMountPath is the directory holding basic-auth-user,
	// basic-auth-password and the AuthTokenSecret file. Defaults to
	// /var/openfaas/secrets.
	SecretMountPath string
	// AuthTokenSecret is the name of the file under SecretMountPath (an
	// OpenFaaS secret) holding the mailbox's API token: a file name,
	// [A-Za-z0-9._-]+. Empty: no token; the management API and the web UI
	// are off and requeue is open. Defaults to empty.
	AuthTokenSecret string
	// RequeueAuth makes POST /deadletter/<fn> need the token too when
	// AuthTokenSecret is set; false keeps requeue open, e.g. for async
	// chains through the queue-worker, which cannot add a header.
	// Defaults to true.
	RequeueAuth bool
	// SignatureWindow is how far a signed requeue's X-Mailbox-Timestamp
	// may be from the mailbox's clock, 1s..1h. Defaults to 5m.
	SignatureWindow time.Duration
	// SessionTTL is how long a web page session lasts, 1m..720h.
	// Defaults to 12h.
	SessionTTL time.Duration
	// MaxInflight is the number of concurrent function invocations per
	// connector, 1..10000. Defaults to 16.
	MaxInflight int
	// UpstreamTimeout bounds one function invocation; it is greater than
	// zero. Defaults to 30s.
	UpstreamTimeout time.Duration
	// DefaultMaxRetries is used when a request has no X-Max-Retries header;
	// it is at most MaxRetriesLimit. Defaults to 10.
	DefaultMaxRetries int
	// DefaultDelay is used when a request has no X-Delay-Duration header; it
	// is at most MaxDelay. Defaults to 60s.
	DefaultDelay time.Duration
	// MaxRetriesLimit is the largest X-Max-Retries accepted. Defaults to
	// 100.
	MaxRetriesLimit int
	// MinRetryDelay is the least wait before a retry, whatever a header,
	// an annotation or a Retry-After says; greater than zero and at most
	// MaxDelay. Defaults to 1s.
	MinRetryDelay time.Duration
	// MaxDelay is the largest X-Delay-Duration accepted, greater than zero
	// and at most 2^21 seconds (about 24 days). Defaults to 168h.
	MaxDelay time.Duration
	// DefaultBackoff is X-Backoff's default: fixed or exponential.
	// Defaults to fixed.
	DefaultBackoff string
	// DefaultTTL is X-Message-TTL's default; zero: no expiry.
	DefaultTTL time.Duration
	// DeadLetterFunction is X-Dead-Letter-Function's default; empty: dead
	// letters are only stored.
	DeadLetterFunction string
	// AllowFunctions are the functions ("name" or "name.namespace") that
	// requeue and replay may target; nil allows every function.
	// Defaults to empty.
	AllowFunctions []string
	// AllowNamespaces are the namespaces that requeue and replay may
	// target; nil allows every namespace. Defaults to empty.
	AllowNamespaces []string
	// MailboxFunction is the mailbox's own function ("name" or
	// "name.namespace"), which it refuses to target: a message to itself
	// would loop. Defaults to mailbox.
	MailboxFunction string
	// RetryCodes are the statuses retried. Defaults to 408, 429, 500,
	// 502, 503 and 504.
	RetryCodes []int
	// NoSuchFunctionGrace is how long a message for an unknown function
	// is retried. Defaults to 60s.
	NoSuchFunctionGrace time.Duration
	// CallbackMaxRetries and CallbackDelay are the callbacks' retries.
	// Default 5 and 1s.
	CallbackMaxRetries int
	CallbackDelay      time.Duration
	// CallbackAllowHosts are the hosts callbacks may go to besides the
	// gateway's functions (callback.ParseHost). Defaults to empty: the
	// gateway only.
	CallbackAllowHosts []string
	// CallbackMaxInflight bounds concurrent callbacks per connector,
	// apart from MaxInflight. Defaults to 4.
	CallbackMaxInflight int
	// FunctionRefresh is how often the connector reads the functions'
	// annotations. Defaults to 30s.
	FunctionRefresh time.Duration
	// MaxBodyBytes is the largest requeued body, 1..67108864 bytes.
	// Defaults to 1048576 (1 MiB).
	MaxBodyBytes int64
	// KeepCredentials keeps the Authorization and Cookie headers on stored
	// messages. Defaults to false.
	KeepCredentials bool
	// Listen is the host:port the standalone server, or the connector's
	// metrics, listens on. Defaults to 127.0.0.1:8090.
	Listen string
	// ReadTimeout bounds reading one request, headers and body, on
	// Listen; WriteTimeout the time from the end of its headers to the end
	// of its answer. The names are of-watchdog's, whose values mailbox-fn
	// shares. Default 10s and 15s.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// MetricsAuth makes /metrics need the token as a bearer token; it
	// needs AuthTokenSecret. Defaults to false, as Prometheus expects.
	MetricsAuth bool
	// DataDir is where the standalone binary's embedded NATS server stores
	// its data. Defaults to ./mailbox-data.
	DataDir string
	// DataDirReserveBytes is the free space kept on DataDir's file system
	// while the standalone binary embeds the server: below it, requeues
	// are refused (507) so that the server's store never runs out of space
	// for what it already accepted. 0 turns the check off. Defaults to
	// 64 MiB.
	DataDirReserveBytes int64
	// StoreDir is not a setting: the standalone binary sets it to its
	// embedded server's store, whose file system the requeue API then
	// watches (DataDirReserveBytes). Empty: nothing is watched.
	StoreDir string
	// LogLevel is the minimum level logged: debug, info, warn or error.
	// Defaults to info.
	LogLevel slog.Level
	// LogFormat is the log output format, text or json. Defaults to json.
	LogFormat string
}

// Load reads every setting through lookup, falling back to defaults and
// then to the built-in defaults of Settings, and validates the result.
//
// lookup is usually Environ(os.Environ()) or the result of Flags; nil reads
// nothing. defaults overrides built-in defaults, keyed by setting name, e.g.
// the standalone binary passes
// {"gateway_url": "http://127.0.0.1:8080", "nats_url": ""}; an unknown key
// is an error. A value that is empty counts as unset, except for nats_url
// (see the package documentation).
//
// The error joins every problem found (errors.Join), each naming the
// setting and its value, e.g.
//
//	config: max_inflight: "abc" is not an integer
func Load(lookup func(name string) (string, bool), defaults map[string]string) (Config, error) {
	settings := settings()
	var errs []error

	known := make(map[string]bool, len(settings))
	for _, s := range settings {
		known[s.Name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(defaults)) {
		if !known[name] {
			errs = append(errs, fmt.Errorf("config: defaults: unknown setting %q", name))
		}
	}

	var c Config
	failed := make(map[string]bool)
	set := make(map[string]bool) // given, not left at the built-in default
	for _, s := range settings {
		value := s.Default
		if v, ok := defaults[s.Name]; ok {
			value = strings.TrimSpace(v)
			set[s.Name] = true
		}
		if v, ok := s.lookup(lookup); ok {
			value = v
			set[s.Name] = true
		}
		if err := s.apply(&c, value); err != nil {
			failed[s.Name] = true
			errs = append(errs, fmt.Errorf("config: %s: %w", s.Name, err))
		}
	}

	// Consistency between settings, checked only when both parsed.
	if !failed["default_max_retries"] && !failed["max_retries_limit"] &&
		c.DefaultMaxRetries > c.MaxRetriesLimit {
		errs = append(errs, fmt.Errorf("config: default_max_retries: %d is greater than max_retries_limit %d",
			c.DefaultMaxRetries, c.MaxRetriesLimit))
	}
	if !failed["default_delay"] && !failed["max_delay"] && c.DefaultDelay > c.MaxDelay {
		errs = append(errs, fmt.Errorf("config: default_delay: %s is greater than max_delay %s",
			c.DefaultDelay, c.MaxDelay))
	}

	if !failed["max_waiting_per_function"] && !failed["max_waiting"] && c.MaxWaitingPerFunction > c.MaxWaiting {
		errs = append(errs, fmt.Errorf("config: max_waiting_per_function: %d is greater than max_waiting %d",
			c.MaxWaitingPerFunction, c.MaxWaiting))
	}
	if !failed["statuses"] && !c.Statuses {
		// The quotas count the statuses' index: without statuses they
		// cannot apply, and a quota asked for must not be silently off.
		for _, name := range []string{"max_waiting", "max_waiting_bytes", "max_waiting_per_function"} {
			if set[name] {
				errs = append(errs, fmt.Errorf("config: %s: cannot apply with statuses false (the quotas count statuses): unset %s or set statuses true", name, name))
			}
		}
	}
	if !failed["min_retry_delay"] && !failed["max_delay"] && c.MinRetryDelay > c.MaxDelay {
		errs = append(errs, fmt.Errorf("config: min_retry_delay: %s is greater than max_delay %s",
			c.MinRetryDelay, c.MaxDelay))
	}

	if !failed["default_ttl"] && !failed["default_delay"] && c.DefaultTTL > 0 && c.DefaultTTL <= c.DefaultDelay {
		// Every requeue without headers would expire before its first
		// delivery.
		errs = append(errs, fmt.Errorf("config: default_ttl: %s is not above default_delay %s", c.DefaultTTL, c.DefaultDelay))
	}

	if !failed["allow_functions"] && !failed["mailbox_function"] {
		self := names.Qualify(c.MailboxFunction, names.DefaultNamespace)
		for _, fn := range c.AllowFunctions {
			if names.Qualify(fn, names.DefaultNamespace) == self {
				errs = append(errs, fmt.Errorf("config: allow_functions: %q is mailbox_function %q: the mailbox does not target itself", fn, c.MailboxFunction))
			}
		}
	}
	if !failed["allow_functions"] && !failed["allow_namespaces"] && len(c.AllowNamespaces) > 0 {
		// Such a function could never be targeted.
		for _, fn := range c.AllowFunctions {
			_, ns, _ := strings.Cut(names.Qualify(fn, names.DefaultNamespace), ".")
			if !slices.Contains(c.AllowNamespaces, ns) {
				errs = append(errs, fmt.Errorf("config: allow_functions: %q is in namespace %s, which allow_namespaces does not list", fn, ns))
			}
		}
	}

	if !failed["metrics_auth"] && !failed["auth_token_secret"] && c.MetricsAuth && c.AuthTokenSecret == "" {
		errs = append(errs, errors.New("config: metrics_auth: true needs a token: set auth_token_secret"))
	}

	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Environ turns os.Environ()-style KEY=value pairs into a lookup. Entries
// without "=" are ignored; when a key repeats, the last value wins (as in
// os/exec). The pairs are copied, so later changes to environ are not seen.
func Environ(environ []string) func(string) (string, bool) {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		env[k] = v
	}
	return func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
}

// Logger builds a logger writing to w at LogLevel, as JSON unless LogFormat
// is "text".
func (c Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
