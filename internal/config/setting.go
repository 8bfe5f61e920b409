package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/names"
)

// backends are the accepted values of the backend setting.
func backends() []string { return []string{"stan", "jetstream"} }

// maxDelayLimit is the largest max_delay accepted: 2^21 seconds.
const maxDelayLimit = (1 << 21) * time.Second

// Setting is one configuration setting: one row of the table that drives
// environment parsing, flags and documentation.
type Setting struct {
	// Name is the environment variable, in lower_snake_case, e.g.
	// "gateway_url".
	Name string
	// Default is the built-in default, written as it would be in the
	// environment.
	Default string
	// Usage is a one-line description.
	Usage string

	emptyIsValue bool // an explicitly empty value is kept, not "unset"
	isBool       bool // a flag without a value means true
	apply        func(c *Config, value string) error
}

// FlagName is the command-line flag of the setting: its name with dashes,
// e.g. "gateway-url".
func (s Setting) FlagName() string { return strings.ReplaceAll(s.Name, "_", "-") }

// lookup reads the setting through lookup, applying the empty-value rule:
// white space is trimmed and an empty value counts as unset unless the
// setting gives it a meaning.
func (s Setting) lookup(lookup func(string) (string, bool)) (string, bool) {
	if lookup == nil {
		return "", false
	}
	v, ok := lookup(s.Name)
	if !ok {
		return "", false
	}
	v = strings.TrimSpace(v)
	if v == "" && !s.emptyIsValue {
		return "", false
	}
	return v, true
}

// Settings returns every setting, in documentation order. The slice is a
// copy; changing it changes nothing else.
func Settings() []Setting { return settings() }

// settings builds the table. It is a function, not a package variable, so
// there is no shared mutable state.
func settings() []Setting {
	return []Setting{
		{
			Name: "backend", Default: "stan",
			Usage: "queue backend: " + strings.Join(backends(), ", "),
			apply: func(c *Config, v string) (err error) {
				c.Backend, err = oneOf(v, backends()...)
				return err
			},
		},
		{
			Name: "nats_url", Default: "nats://nats.openfaas:4222",
			Usage:        "NATS server, a nats:// or tls:// URL (JetStream: a comma-separated list of cluster members); empty embeds a server where supported",
			emptyIsValue: true,
			apply: func(c *Config, v string) error {
				for u := range strings.SplitSeq(v, ",") {
					if v == "" {
						break
					}
					if err := checkURL(strings.TrimSpace(u), "nats", "tls"); err != nil {
						return err
					}
				}
				c.NATSURL = v
				return nil
			},
		},
		{
			Name: "nats_credentials_file", Default: "",
			Usage:        "NATS credentials (.creds) file; empty for none",
			emptyIsValue: true,
			apply: func(c *Config, v string) error {
				c.NATSCredentialsFile = v
				return nil
			},
		},
		{
			Name: "nats_cluster_id", Default: "faas-cluster",
			Usage: "NATS Streaming cluster id",
			apply: func(c *Config, v string) error {
				if err := checkChars(v, "A-Za-z0-9_-", func(r rune) bool {
					return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-'
				}); err != nil {
					return err
				}
				c.NATSClusterID = v
				return nil
			},
		},
		{
			Name: "nats_client_id", Default: "",
			Usage:        "NATS Streaming client id of this process, one per replica; empty for <channel_prefix>-<role>-<host name> (role: api or connector), which a restarted container keeps (a restarted replica then takes over at once what the dead one held)",
			emptyIsValue: true,
			apply: func(c *Config, v string) error {
				if v == "" {
					c.NATSClientID = ""
					return nil
				}
				if err := checkChars(v, "A-Za-z0-9_-", func(r rune) bool {
					return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-'
				}); err != nil {
					return err
				}
				c.NATSClientID = v
				return nil
			},
		},
		{
			Name: "jetstream_stream", Default: "mailbox",
			Usage: "JetStream stream of waiting messages; dead letters go to <it>-deadletter",
			apply: func(c *Config, v string) (err error) {
				c.JetStreamStream, err = name(v)
				return err
			},
		},
		{
			Name: "jetstream_consumer", Default: "connector",
			Usage: "durable JetStream consumer shared by connectors",
			apply: func(c *Config, v string) (err error) {
				c.JetStreamConsumer, err = name(v)
				return err
			},
		},
		{
			Name: "jetstream_replicas", Default: "1",
			Usage: "replicas of each JetStream stream: 1, or 3 or 5 on a cluster",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 5)
				c.JetStreamReplicas = int(n)
				return err
			},
		},
		{
			Name: "dead_letter_max_age", Default: "336h",
			Usage: "how long dead letters are kept (either backend); older ones are removed; 0 keeps them until removed",
			apply: func(c *Config, v string) (err error) {
				c.DeadLetterMaxAge, err = parseDuration(v, false, 0)
				return err
			},
		},
		{
			Name: "dead_letter_limit", Default: "100000",
			Usage: "most dead letters kept per function, 1..10000000; past it the function's oldest are removed, logged and counted (one function's flood never removes another's)",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 10_000_000)
				c.DeadLetterLimit = int(n)
				return err
			},
		},
		{
			Name: "max_waiting", Default: "100000",
			Usage: "most messages waiting or in flight, 1..100000000; past it a requeue is refused with 507 (retries and dead letters of accepted messages never are)",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 100_000_000)
				c.MaxWaiting = int(n)
				return err
			},
		},
		{
			Name: "max_waiting_bytes", Default: "1073741824",
			Usage: "most bytes of bodies waiting or in flight, 1048576..1125899906842624; past it a requeue is refused with 507",
			apply: func(c *Config, v string) (err error) {
				c.MaxWaitingBytes, err = parseInt(v, 1<<20, 1<<50)
				return err
			},
		},
		{
			Name: "max_waiting_per_function", Default: "10000",
			Usage: "most messages waiting or in flight for one function, 1..max_waiting; past it a requeue to it is refused with 429",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 100_000_000)
				c.MaxWaitingPerFunction = int(n)
				return err
			},
		},
		{
			Name: "replay_rate", Default: "50/s",
			Usage: "most dead letters a bulk replay puts back, written like the com.openfaas.mailbox.rate annotation (e.g. 50/s, 600/m)",
			apply: func(c *Config, v string) (err error) {
				c.ReplayRate, err = ParseRate(v)
				return err
			},
		},
		{
			Name: "statuses", Default: "true", isBool: true,
			Usage: "record each message's status (waiting, in flight, delivered, dead-lettered); false records none: GET /messages/<id> answers 404, mailbox_waiting and the web page's waiting counts are not shown, and the quotas max_waiting, max_waiting_bytes and max_waiting_per_function, which count statuses, are off, their defaults too (setting one is refused): only the broker's storage limit bounds what waits",
			apply: func(c *Config, v string) (err error) {
				c.Statuses, err = parseBool(v)
				return err
			},
		},
		{
			Name: "status_retention", Default: "24h",
			Usage: "how long GET /messages/<id> still answers after a message's last step (for a waiting message, after it is due)",
			apply: func(c *Config, v string) (err error) {
				c.StatusRetention, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "max_statuses_per_function", Default: "100000",
			Usage: "JetStream: most statuses kept per function name, 1..1000000, its newest; one function's flood of statuses pushes out its own, never another's",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 1_000_000)
				c.MaxStatusesPerFunction = int(n)
				return err
			},
		},
		{
			Name: "channel_prefix", Default: "mailbox",
			Usage: "prefix of the queue channel names",
			apply: func(c *Config, v string) error {
				if err := checkChars(v, "a-z0-9_-", func(r rune) bool {
					return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-'
				}); err != nil {
					return err
				}
				c.ChannelPrefix = v
				return nil
			},
		},
		{
			Name: "gateway_url", Default: "http://gateway.openfaas:8080",
			Usage: "OpenFaaS gateway URL",
			apply: func(c *Config, v string) error {
				if err := checkURL(v, "http", "https"); err != nil {
					return err
				}
				c.GatewayURL = strings.TrimRight(v, "/")
				return nil
			},
		},
		{
			Name: "basic_auth", Default: "false", isBool: true,
			Usage: "read gateway credentials from secret_mount_path",
			apply: func(c *Config, v string) (err error) {
				c.BasicAuth, err = parseBool(v)
				return err
			},
		},
		{
			Name: "secret_mount_path", Default: "/var/openfaas/secrets",
			Usage: "directory holding basic-auth-user, basic-auth-password and the auth_token_secret file",
			apply: func(c *Config, v string) (err error) {
				c.SecretMountPath, err = nonEmpty(v)
				return err
			},
		},
		{
			Name: "auth_token_secret", Default: "",
			Usage: "name of the secret file under secret_mount_path holding the mailbox's API token; empty: no token, the management API and the web UI are off and requeue is open",
			apply: func(c *Config, v string) error {
				if v != "" {
					if err := checkChars(v, "A-Za-z0-9._-", func(r rune) bool {
						return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
					}); err != nil {
						return err
					}
					if v == "." || v == ".." {
						return fmt.Errorf("%q is not a file name", v)
					}
				}
				c.AuthTokenSecret = v
				return nil
			},
		},
		{
			Name: "requeue_auth", Default: "true", isBool: true,
			Usage: "with a token, POST /deadletter/<fn> needs it too; false keeps requeue open (e.g. for async chains through the queue-worker, which cannot add a header)",
			apply: func(c *Config, v string) (err error) {
				c.RequeueAuth, err = parseBool(v)
				return err
			},
		},
		{
			Name: "signature_window", Default: "5m",
			Usage: "how far a signed requeue's X-Mailbox-Timestamp may be from the mailbox's clock, 1s..1h; outside it the signature is refused",
			apply: func(c *Config, v string) (err error) {
				c.SignatureWindow, err = parseDuration(v, true, time.Hour)
				if err == nil && c.SignatureWindow < time.Second {
					err = fmt.Errorf("%q is less than 1s", v)
				}
				return err
			},
		},
		{
			Name: "session_ttl", Default: "12h",
			Usage: "how long a web page session lasts, 1m..720h; it ends then on the server, or at sign-out",
			apply: func(c *Config, v string) (err error) {
				c.SessionTTL, err = parseDuration(v, true, 720*time.Hour)
				if err == nil && c.SessionTTL < time.Minute {
					err = fmt.Errorf("%q is less than 1m", v)
				}
				return err
			},
		},
		{
			Name: "max_inflight", Default: "16",
			Usage: "concurrent function invocations per connector, 1..10000",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 10000)
				c.MaxInflight = int(n)
				return err
			},
		},
		{
			Name: "upstream_timeout", Default: "30s",
			Usage: "timeout of one function invocation (e.g. 30s, or 30 for seconds)",
			apply: func(c *Config, v string) (err error) {
				c.UpstreamTimeout, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "default_max_retries", Default: "10",
			Usage: "X-Max-Retries when the header is absent; at most max_retries_limit",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 0, math.MaxInt32)
				c.DefaultMaxRetries = int(n)
				return err
			},
		},
		{
			Name: "default_delay", Default: "60s",
			Usage: "X-Delay-Duration when the header is absent; at most max_delay",
			apply: func(c *Config, v string) (err error) {
				c.DefaultDelay, err = parseDuration(v, false, 0)
				return err
			},
		},
		{
			Name: "max_retries_limit", Default: "100",
			Usage: "largest X-Max-Retries accepted",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 0, math.MaxInt32)
				c.MaxRetriesLimit = int(n)
				return err
			},
		},
		{
			Name: "max_delay", Default: "168h",
			Usage: "largest X-Delay-Duration accepted, at most 2^21 seconds (about 24 days)",
			apply: func(c *Config, v string) (err error) {
				c.MaxDelay, err = parseDuration(v, true, maxDelayLimit)
				return err
			},
		},
		{
			Name: "min_retry_delay", Default: "1s",
			Usage: "least wait before a retry, whatever X-Delay-Duration, X-Backoff, an annotation or a Retry-After says (the first delivery may be immediate); at most max_delay",
			apply: func(c *Config, v string) (err error) {
				c.MinRetryDelay, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "default_backoff", Default: "fixed",
			Usage: "X-Backoff when neither the header nor the function's annotation sets it: fixed or exponential",
			apply: func(c *Config, v string) (err error) {
				c.DefaultBackoff, err = oneOf(v, "fixed", "exponential")
				return err
			},
		},
		{
			Name: "default_ttl", Default: "0",
			Usage: "X-Message-TTL when neither the header nor the function's annotation sets it; 0: messages do not expire",
			apply: func(c *Config, v string) (err error) {
				c.DefaultTTL, err = parseDuration(v, false, 0)
				return err
			},
		},
		{
			Name: "dead_letter_function", Default: "",
			Usage: "function dead letters are routed to when neither X-Dead-Letter-Function nor the annotation names one; empty: only stored",
			apply: func(c *Config, v string) error {
				if v != "" && !names.Valid(v) {
					return fmt.Errorf("%q is not <function> or <function>.<namespace> (DNS-1123 labels)", v)
				}
				c.DeadLetterFunction = v
				return nil
			},
		},
		{
			Name: "allow_functions", Default: "",
			Usage: "comma-separated functions (name or name.namespace) requeue and replay may target; empty: all",
			apply: func(c *Config, v string) (err error) {
				c.AllowFunctions, err = list(v, func(f string) error {
					if !names.Valid(f) {
						return fmt.Errorf("%q is not <function> or <function>.<namespace> (DNS-1123 labels)", f)
					}
					return nil
				})
				return err
			},
		},
		{
			Name: "allow_namespaces", Default: "",
			Usage: "comma-separated namespaces requeue and replay may target; empty: all",
			apply: func(c *Config, v string) (err error) {
				c.AllowNamespaces, err = list(v, func(ns string) error {
					if !names.ValidLabel(ns) {
						return fmt.Errorf("%q is not a namespace (a DNS-1123 label)", ns)
					}
					return nil
				})
				return err
			},
		},
		{
			Name: "mailbox_function", Default: "mailbox",
			Usage: "the mailbox's own function (name or name.namespace), which it refuses to target: a message to itself would loop",
			apply: func(c *Config, v string) error {
				if !names.Valid(v) {
					return fmt.Errorf("%q is not <function> or <function>.<namespace> (DNS-1123 labels)", v)
				}
				c.MailboxFunction = v
				return nil
			},
		},
		{
			Name: "retry_codes", Default: "408,429,500,502,503,504",
			Usage: "comma-separated HTTP statuses a function answers that are retried (network errors always are); any other non-2xx dead-letters the message as rejected",
			apply: func(c *Config, v string) error {
				c.RetryCodes = nil
				for f := range strings.SplitSeq(v, ",") {
					n, err := parseInt(strings.TrimSpace(f), 100, 599)
					if err != nil {
						return err
					}
					if n >= 200 && n <= 299 {
						return fmt.Errorf("%d is a success, not a code to retry", n)
					}
					c.RetryCodes = append(c.RetryCodes, int(n))
				}
				return nil
			},
		},
		{
			Name: "no_such_function_grace", Default: "60s",
			Usage: "how long a message for a function the gateway does not know is retried before it becomes a dead letter (no-such-function)",
			apply: func(c *Config, v string) (err error) {
				c.NoSuchFunctionGrace, err = parseDuration(v, false, 0)
				return err
			},
		},
		{
			Name: "callback_max_retries", Default: "5",
			Usage: "retries of a callback to X-Callback-Url before it is kept as a dead letter",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 0, 100)
				c.CallbackMaxRetries = int(n)
				return err
			},
		},
		{
			Name: "callback_delay", Default: "1s",
			Usage: "first wait before a callback is retried; it doubles up to max_delay",
			apply: func(c *Config, v string) (err error) {
				c.CallbackDelay, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "callback_allow_hosts", Default: "",
			Usage: "comma-separated hosts X-Callback-Url may name besides the gateway's functions: host (default port), host:port, *.domain[:port]; a wildcard reaches public addresses only; empty: the gateway only",
			apply: func(c *Config, v string) (err error) {
				c.CallbackAllowHosts, err = list(v, func(h string) error {
					_, err := callback.ParseHost(h)
					return err
				})
				return err
			},
		},
		{
			Name: "callback_max_inflight", Default: "4",
			Usage: "concurrent callbacks per connector, 1..32, apart from max_inflight: a slow callback never holds a delivery",
			apply: func(c *Config, v string) error {
				n, err := parseInt(v, 1, 32)
				c.CallbackMaxInflight = int(n)
				return err
			},
		},
		{
			Name: "function_refresh", Default: "30s",
			Usage: "how often the connector reads the functions and their com.openfaas.mailbox.* annotations from the gateway",
			apply: func(c *Config, v string) (err error) {
				c.FunctionRefresh, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "max_body_bytes", Default: "1048576",
			Usage: "largest requeued body in bytes, 1..67108864",
			apply: func(c *Config, v string) (err error) {
				c.MaxBodyBytes, err = parseInt(v, 1, 64<<20)
				return err
			},
		},
		{
			Name: "keep_credentials", Default: "false", isBool: true,
			Usage: "keep Authorization and Cookie headers on stored messages",
			apply: func(c *Config, v string) (err error) {
				c.KeepCredentials, err = parseBool(v)
				return err
			},
		},
		{
			Name: "listen", Default: "127.0.0.1:8090",
			Usage: "host:port of the standalone server or the connector's metrics",
			apply: func(c *Config, v string) error {
				if err := checkHostPort(v); err != nil {
					return err
				}
				c.Listen = v
				return nil
			},
		},
		{
			Name: "read_timeout", Default: "10s",
			Usage: "longest a client may take to send one request, headers and body, to listen (raise it with max_body_bytes for slow clients); in mailbox-fn, of-watchdog's setting of the same name",
			apply: func(c *Config, v string) (err error) {
				c.ReadTimeout, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "write_timeout", Default: "15s",
			Usage: "longest from the end of a request's headers on listen to the end of its answer: reading the body, storing and answering; in mailbox-fn, of-watchdog's setting of the same name",
			apply: func(c *Config, v string) (err error) {
				c.WriteTimeout, err = parseDuration(v, true, 0)
				return err
			},
		},
		{
			Name: "metrics_auth", Default: "false", isBool: true,
			Usage: "/metrics and /_metrics need Authorization: Bearer <token> (auth_token_secret, which must then be set, also on the connector); false leaves them open, as Prometheus expects",
			apply: func(c *Config, v string) (err error) {
				c.MetricsAuth, err = parseBool(v)
				return err
			},
		},
		{
			Name: "data_dir", Default: "./mailbox-data",
			Usage: "data directory of the standalone binary's embedded NATS server",
			apply: func(c *Config, v string) (err error) {
				c.DataDir, err = nonEmpty(v)
				return err
			},
		},
		{
			Name: "data_dir_reserve_bytes", Default: "67108864",
			Usage: "free space kept on data_dir's file system, 0..1125899906842624: below it the standalone binary's requeue API refuses new messages with 507, keeping the rest for retries, statuses and dead letters of accepted ones; 0 turns the check off",
			apply: func(c *Config, v string) (err error) {
				c.DataDirReserveBytes, err = parseInt(v, 0, 1<<50)
				return err
			},
		},
		{
			Name: "log_level", Default: "info",
			Usage: "minimum log level: debug, info, warn or error",
			apply: func(c *Config, v string) error {
				level, err := oneOf(v, "debug", "info", "warn", "error")
				if err != nil {
					return err
				}
				return c.LogLevel.UnmarshalText([]byte(level))
			},
		},
		{
			Name: "log_format", Default: "json",
			Usage: "log format: text or json",
			apply: func(c *Config, v string) (err error) {
				c.LogFormat, err = oneOf(v, "text", "json")
				return err
			},
		},
	}
}

// The parsers below return errors that quote the value; Load prefixes them
// with "config: <name>: ".

func oneOf(v string, options ...string) (string, error) {
	lower := strings.ToLower(v)
	for _, o := range options {
		if lower == o {
			return o, nil
		}
	}
	return "", fmt.Errorf("%q is not one of %s", v, strings.Join(options, ", "))
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%q is not a boolean (true, false, 1 or 0)", v)
	}
	return b, nil
}

func parseInt(v string, lo, hi int64) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("%q is greater than %d", v, hi)
		}
		return 0, fmt.Errorf("%q is not an integer", v)
	}
	if n < lo {
		return 0, fmt.Errorf("%q is less than %d", v, lo)
	}
	if n > hi {
		return 0, fmt.Errorf("%q is greater than %d", v, hi)
	}
	return n, nil
}

// parseDuration parses v with ParseSeconds. positive rejects zero; hi, if
// not zero, is the largest value accepted.
func parseDuration(v string, positive bool, hi time.Duration) (time.Duration, error) {
	d, err := ParseSeconds(v)
	if err != nil {
		return 0, err
	}
	if positive && d == 0 {
		return 0, fmt.Errorf("%q is not greater than zero", v)
	}
	if hi != 0 && d > hi {
		return 0, fmt.Errorf("%q is greater than %s", v, hi)
	}
	return d, nil
}

// name checks a stream or consumer name: letters, digits, '_' and '-'.
func name(v string) (string, error) {
	return v, checkChars(v, "A-Za-z0-9_-", func(r rune) bool {
		return r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-'
	})
}

// list splits a comma-separated v, trimming each entry and checking it
// with check; empty v is nil.
func list(v string, check func(string) error) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var out []string
	for e := range strings.SplitSeq(v, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			return nil, fmt.Errorf("%q has an empty entry", v)
		}
		if err := check(e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func nonEmpty(v string) (string, error) {
	if v == "" {
		return "", errors.New(`"" is empty`)
	}
	return v, nil
}

func checkChars(v, class string, ok func(rune) bool) error {
	if v == "" {
		return errors.New(`"" is empty`)
	}
	for _, r := range v {
		if !ok(r) {
			return fmt.Errorf("%q has characters outside [%s]", v, class)
		}
	}
	return nil
}

func checkURL(v string, schemes ...string) error {
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("%q is not a URL", v)
	}
	schemeOK := false
	for _, s := range schemes {
		if u.Scheme == s {
			schemeOK = true
		}
	}
	if !schemeOK {
		return fmt.Errorf("%q is not a %s:// URL", v, strings.Join(schemes, ":// or "))
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%q has no host", v)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("%q has a query or fragment", v)
	}
	return nil
}

func checkHostPort(v string) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("%q is not host:port", v)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q has no port number 0..65535", v)
	}
	return nil
}
