package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

// env returns a lookup over literal pairs.
func env(pairs ...string) func(string) (string, bool) {
	m := make(map[string]string)
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// builtin is the Config the built-in defaults produce.
func builtin() Config {
	return Config{
		Backend:                "stan",
		NATSURL:                "nats://nats.openfaas:4222",
		JetStreamStream:        "mailbox",
		JetStreamConsumer:      "connector",
		JetStreamReplicas:      1,
		DeadLetterMaxAge:       336 * time.Hour,
		DeadLetterLimit:        100000,
		MaxWaiting:             100000,
		MaxWaitingBytes:        1 << 30,
		MaxWaitingPerFunction:  10000,
		ReplayRate:             Rate{N: 50, Per: time.Second},
		Statuses:               true,
		StatusRetention:        24 * time.Hour,
		MaxStatusesPerFunction: 100000,
		NATSClusterID:          "faas-cluster",
		ChannelPrefix:          "mailbox",
		GatewayURL:             "http://gateway.openfaas:8080",
		BasicAuth:              false,
		SecretMountPath:        "/var/openfaas/secrets",
		// No token: requeue is open, the management API and the UI off.
		AuthTokenSecret:   "",
		RequeueAuth:       true,
		SignatureWindow:   5 * time.Minute,
		SessionTTL:        12 * time.Hour,
		MaxInflight:       16,
		UpstreamTimeout:   30 * time.Second,
		DefaultMaxRetries: 10,
		DefaultDelay:      60 * time.Second,
		MaxRetriesLimit:   100,
		MinRetryDelay:     time.Second,
		MaxDelay:          168 * time.Hour,
		DefaultBackoff:    "fixed",
		DefaultTTL:        0,
		RetryCodes:        []int{408, 429, 500, 502, 503, 504},
		// The default dead_letter_function is empty: dead letters are
		// only stored.
		DeadLetterFunction: "",
		// Every function may be targeted but the mailbox itself.
		AllowFunctions:      nil,
		AllowNamespaces:     nil,
		MailboxFunction:     "mailbox",
		NoSuchFunctionGrace: 60 * time.Second,
		CallbackMaxRetries:  5,
		CallbackDelay:       time.Second,
		CallbackMaxInflight: 4,
		FunctionRefresh:     30 * time.Second,
		MaxBodyBytes:        1 << 20,
		KeepCredentials:     false,
		Listen:              "127.0.0.1:8090",
		// Every server bounds its clients (internal/httpserver).
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 15 * time.Second,
		// /metrics is open, as Prometheus expects.
		MetricsAuth: false,
		DataDir:     "./mailbox-data",
		// Requeues stop with 64 MiB left for what was accepted.
		DataDirReserveBytes: 64 << 20,
		LogLevel:            slog.LevelInfo,
		LogFormat:           "json",
	}
}

// equal compares Configs, which hold a slice (RetryCodes).
func equal(a, b Config) bool { return reflect.DeepEqual(a, b) }

// joined returns the individual errors of an errors.Join result.
func joined(t *testing.T, err error) []error {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got nil")
	}
	u, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	return u.Unwrap()
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name   string
		lookup func(string) (string, bool)
	}{
		{"nil lookup", nil},
		{"empty environment", Environ(nil)},
		{"unrelated variables", Environ([]string{"PATH=/bin", "HOME=/root", "GATEWAY_URL=not checked", "fprocess=cat"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Load(tc.lookup, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if want := builtin(); !equal(got, want) {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadCallerDefaults(t *testing.T) {
	t.Parallel()

	standalone := map[string]string{"gateway_url": "http://127.0.0.1:8080/", "nats_url": ""}

	got, err := Load(nil, standalone)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := builtin()
	want.GatewayURL = "http://127.0.0.1:8080"
	want.NATSURL = ""
	if !equal(got, want) {
		t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
	}

	// The environment still beats the caller's defaults.
	got, err = Load(env("gateway_url", "https://gw.example.com", "nats_url", "nats://127.0.0.1:4222"), standalone)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.GatewayURL != "https://gw.example.com" || got.NATSURL != "nats://127.0.0.1:4222" {
		t.Errorf("GatewayURL, NATSURL = %q, %q; want the environment's", got.GatewayURL, got.NATSURL)
	}

	// A bad or unknown caller default is an error, not ignored.
	_, err = Load(nil, map[string]string{"gatway_url": "http://x", "max_inflight": "0"})
	msg := errString(err)
	for _, want := range []string{`config: defaults: unknown setting "gatway_url"`, `config: max_inflight: "0" is less than 1`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestLoadEmptyValue(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name  string
		key   string
		value string
		want  func(*Config)
	}{
		{"empty is unset", "max_inflight", "", func(*Config) {}},
		{"blank is unset", "gateway_url", "   ", func(*Config) {}},
		{"empty bool is unset", "basic_auth", "", func(*Config) {}},
		{"empty nats_url embeds", "nats_url", "", func(c *Config) { c.NATSURL = "" }},
		{"blank nats_url embeds", "nats_url", " ", func(c *Config) { c.NATSURL = "" }},
		{"values are trimmed", "max_inflight", " 4\n", func(c *Config) { c.MaxInflight = 4 }},
		{"empty retry_codes is unset", "retry_codes", "", func(*Config) {}},
		{"blank dead_letter_function is unset", "dead_letter_function", " ", func(*Config) {}},
		{"empty callback_delay is unset", "callback_delay", "", func(*Config) {}},
		{"blank auth_token_secret is unset", "auth_token_secret", " ", func(*Config) {}},
		{"empty requeue_auth is unset", "requeue_auth", "", func(*Config) {}},
		{"empty allow_functions is unset", "allow_functions", "", func(*Config) {}},
		{"blank allow_namespaces is unset", "allow_namespaces", "  ", func(*Config) {}},
		{"empty mailbox_function is unset", "mailbox_function", "", func(*Config) {}},
		{"empty dead_letter_max_age is unset", "dead_letter_max_age", "", func(*Config) {}},
		{"empty dead_letter_limit is unset", "dead_letter_limit", "", func(*Config) {}},
		{"empty replay_rate is unset", "replay_rate", "", func(*Config) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Load(env(tc.key, tc.value), nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := builtin()
			tc.want(&want)
			if !equal(got, want) {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadValid(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		key, value string
		want       func(*Config)
	}{
		{"backend", "stan", func(c *Config) { c.Backend = "stan" }},
		{"backend", "STAN", func(c *Config) { c.Backend = "stan" }},
		{"backend", "jetstream", func(c *Config) { c.Backend = "jetstream" }},
		{"nats_url", "nats://a:4222,nats://b:4222", func(c *Config) { c.NATSURL = "nats://a:4222,nats://b:4222" }},
		{"nats_credentials_file", "/secrets/nats.creds", func(c *Config) { c.NATSCredentialsFile = "/secrets/nats.creds" }},
		{"jetstream_stream", "MB_2-x", func(c *Config) { c.JetStreamStream = "MB_2-x" }},
		{"jetstream_consumer", "worker", func(c *Config) { c.JetStreamConsumer = "worker" }},
		{"jetstream_replicas", "3", func(c *Config) { c.JetStreamReplicas = 3 }},
		{"dead_letter_max_age", "336h", func(c *Config) { c.DeadLetterMaxAge = 336 * time.Hour }},
		{"dead_letter_max_age", "60", func(c *Config) { c.DeadLetterMaxAge = time.Minute }},
		{"dead_letter_max_age", "0", func(c *Config) { c.DeadLetterMaxAge = 0 }},
		{"dead_letter_limit", "1", func(c *Config) { c.DeadLetterLimit = 1 }},
		{"dead_letter_limit", "10000000", func(c *Config) { c.DeadLetterLimit = 10_000_000 }},
		{"replay_rate", "10/s", func(c *Config) { c.ReplayRate = Rate{10, time.Second} }},
		{"replay_rate", "600/m", func(c *Config) { c.ReplayRate = Rate{600, time.Minute} }},
		{"replay_rate", "1/h", func(c *Config) { c.ReplayRate = Rate{1, time.Hour} }},
		{"statuses", "false", func(c *Config) { c.Statuses = false }},
		{"statuses", "0", func(c *Config) { c.Statuses = false }},
		{"status_retention", "1h", func(c *Config) { c.StatusRetention = time.Hour }},
		{"max_statuses_per_function", "5000", func(c *Config) { c.MaxStatusesPerFunction = 5000 }},
		{"nats_url", "nats://127.0.0.1:4222", func(c *Config) { c.NATSURL = "nats://127.0.0.1:4222" }},
		{"nats_url", "tls://nats.example.com:4443", func(c *Config) { c.NATSURL = "tls://nats.example.com:4443" }},
		{"nats_cluster_id", "my_Cluster-2", func(c *Config) { c.NATSClusterID = "my_Cluster-2" }},
		{"nats_client_id", "mailbox-0", func(c *Config) { c.NATSClientID = "mailbox-0" }},
		{"channel_prefix", "mb_2-x", func(c *Config) { c.ChannelPrefix = "mb_2-x" }},
		{"gateway_url", "https://gw.example.com/", func(c *Config) { c.GatewayURL = "https://gw.example.com" }},
		{"gateway_url", "http://gw:8080/prefix//", func(c *Config) { c.GatewayURL = "http://gw:8080/prefix" }},
		{"basic_auth", "true", func(c *Config) { c.BasicAuth = true }},
		{"basic_auth", "1", func(c *Config) { c.BasicAuth = true }},
		{"basic_auth", "0", func(c *Config) { c.BasicAuth = false }},
		{"secret_mount_path", "/run/secrets", func(c *Config) { c.SecretMountPath = "/run/secrets" }},
		{"auth_token_secret", "mailbox-token", func(c *Config) { c.AuthTokenSecret = "mailbox-token" }},
		{"auth_token_secret", "Token_2.txt", func(c *Config) { c.AuthTokenSecret = "Token_2.txt" }},
		{"auth_token_secret", "..token", func(c *Config) { c.AuthTokenSecret = "..token" }},
		{"requeue_auth", "false", func(c *Config) { c.RequeueAuth = false }},
		{"read_timeout", "3", func(c *Config) { c.ReadTimeout = 3 * time.Second }},
		{"read_timeout", "1m30s", func(c *Config) { c.ReadTimeout = 90 * time.Second }},
		{"write_timeout", "20s", func(c *Config) { c.WriteTimeout = 20 * time.Second }},
		{"requeue_auth", "1", func(c *Config) { c.RequeueAuth = true }},
		{"signature_window", "30s", func(c *Config) { c.SignatureWindow = 30 * time.Second }},
		{"session_ttl", "1h", func(c *Config) { c.SessionTTL = time.Hour }},
		{"max_inflight", "1", func(c *Config) { c.MaxInflight = 1 }},
		{"max_inflight", "10000", func(c *Config) { c.MaxInflight = 10000 }},
		{"upstream_timeout", "1500ms", func(c *Config) { c.UpstreamTimeout = 1500 * time.Millisecond }},
		{"upstream_timeout", "45", func(c *Config) { c.UpstreamTimeout = 45 * time.Second }},
		{"default_max_retries", "0", func(c *Config) { c.DefaultMaxRetries = 0 }},
		{"default_delay", "2m", func(c *Config) { c.DefaultDelay = 2 * time.Minute }},
		{"default_delay", "90", func(c *Config) { c.DefaultDelay = 90 * time.Second }},
		{"default_delay", "0", func(c *Config) { c.DefaultDelay = 0 }},
		{"max_retries_limit", "10", func(c *Config) { c.MaxRetriesLimit = 10 }},
		{"min_retry_delay", "250ms", func(c *Config) { c.MinRetryDelay = 250 * time.Millisecond }},
		{"max_delay", "2097152", func(c *Config) { c.MaxDelay = 2097152 * time.Second }},
		{"max_delay", "1h", func(c *Config) { c.MaxDelay = time.Hour }},
		{"default_backoff", "fixed", func(c *Config) { c.DefaultBackoff = "fixed" }},
		{"default_backoff", "exponential", func(c *Config) { c.DefaultBackoff = "exponential" }},
		{"default_backoff", "Exponential", func(c *Config) { c.DefaultBackoff = "exponential" }},
		{"default_ttl", "0", func(c *Config) { c.DefaultTTL = 0 }},
		{"default_ttl", "24h", func(c *Config) { c.DefaultTTL = 24 * time.Hour }},
		{"default_ttl", "3600", func(c *Config) { c.DefaultTTL = time.Hour }},
		// No cap: a message may live through many delays.
		{"default_ttl", "2000h", func(c *Config) { c.DefaultTTL = 2000 * time.Hour }},
		{"dead_letter_function", "dlq", func(c *Config) { c.DeadLetterFunction = "dlq" }},
		{"dead_letter_function", "dlq.openfaas-fn", func(c *Config) { c.DeadLetterFunction = "dlq.openfaas-fn" }},
		{"allow_functions", "fn", func(c *Config) { c.AllowFunctions = []string{"fn"} }},
		{"allow_functions", " fn , other.dev,fn.openfaas-fn ", func(c *Config) { c.AllowFunctions = []string{"fn", "other.dev", "fn.openfaas-fn"} }},
		// Another namespace's function named like the mailbox is not it.
		{"allow_functions", "mailbox.dev", func(c *Config) { c.AllowFunctions = []string{"mailbox.dev"} }},
		{"allow_namespaces", "openfaas-fn", func(c *Config) { c.AllowNamespaces = []string{"openfaas-fn"} }},
		{"allow_namespaces", "dev, team-a", func(c *Config) { c.AllowNamespaces = []string{"dev", "team-a"} }},
		{"mailbox_function", "mb", func(c *Config) { c.MailboxFunction = "mb" }},
		{"mailbox_function", "mailbox.openfaas", func(c *Config) { c.MailboxFunction = "mailbox.openfaas" }},
		{"retry_codes", "429", func(c *Config) { c.RetryCodes = []int{429} }},
		{"retry_codes", "429,503", func(c *Config) { c.RetryCodes = []int{429, 503} }},
		{"retry_codes", " 500 , 502 ,504", func(c *Config) { c.RetryCodes = []int{500, 502, 504} }},
		{"retry_codes", "100,199,300,404,599", func(c *Config) { c.RetryCodes = []int{100, 199, 300, 404, 599} }},
		{"no_such_function_grace", "0", func(c *Config) { c.NoSuchFunctionGrace = 0 }},
		{"no_such_function_grace", "5m", func(c *Config) { c.NoSuchFunctionGrace = 5 * time.Minute }},
		{"no_such_function_grace", "90", func(c *Config) { c.NoSuchFunctionGrace = 90 * time.Second }},
		{"callback_max_retries", "0", func(c *Config) { c.CallbackMaxRetries = 0 }},
		{"callback_max_retries", "100", func(c *Config) { c.CallbackMaxRetries = 100 }},
		{"callback_delay", "250ms", func(c *Config) { c.CallbackDelay = 250 * time.Millisecond }},
		{"callback_delay", "10", func(c *Config) { c.CallbackDelay = 10 * time.Second }},
		{"callback_allow_hosts", "hooks.example.com, *.partner.example:8443,10.0.0.7:9000,[fd00::7]", func(c *Config) {
			c.CallbackAllowHosts = []string{"hooks.example.com", "*.partner.example:8443", "10.0.0.7:9000", "[fd00::7]"}
		}},
		{"callback_max_inflight", "1", func(c *Config) { c.CallbackMaxInflight = 1 }},
		{"callback_max_inflight", "32", func(c *Config) { c.CallbackMaxInflight = 32 }},
		{"function_refresh", "1s", func(c *Config) { c.FunctionRefresh = time.Second }},
		{"function_refresh", "300", func(c *Config) { c.FunctionRefresh = 5 * time.Minute }},
		{"max_body_bytes", "1", func(c *Config) { c.MaxBodyBytes = 1 }},
		{"max_body_bytes", "67108864", func(c *Config) { c.MaxBodyBytes = 64 << 20 }},
		{"keep_credentials", "TRUE", func(c *Config) { c.KeepCredentials = true }},
		{"listen", ":8090", func(c *Config) { c.Listen = ":8090" }},
		{"listen", "[::1]:0", func(c *Config) { c.Listen = "[::1]:0" }},
		{"data_dir", "/var/lib/mailbox", func(c *Config) { c.DataDir = "/var/lib/mailbox" }},
		{"log_level", "debug", func(c *Config) { c.LogLevel = slog.LevelDebug }},
		{"log_level", "WARN", func(c *Config) { c.LogLevel = slog.LevelWarn }},
		{"log_level", "error", func(c *Config) { c.LogLevel = slog.LevelError }},
		{"log_format", "text", func(c *Config) { c.LogFormat = "text" }},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			got, err := Load(env(tc.key, tc.value), nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := builtin()
			tc.want(&want)
			if !equal(got, want) {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		key, value string
		want       string // the whole error
	}{
		{"backend", "kafka", `config: backend: "kafka" is not one of stan, jetstream`},
		{"nats_url", "nats://a:4222,http://b", `config: nats_url: "http://b" is not a nats:// or tls:// URL`},
		{"jetstream_stream", "mail.box", `config: jetstream_stream: "mail.box" has characters outside [A-Za-z0-9_-]`},
		{"jetstream_consumer", "a b", `config: jetstream_consumer: "a b" has characters outside [A-Za-z0-9_-]`},
		{"jetstream_replicas", "6", `config: jetstream_replicas: "6" is greater than 5`},
		{"jetstream_replicas", "0", `config: jetstream_replicas: "0" is less than 1`},
		{"dead_letter_max_age", "-1h", `config: dead_letter_max_age: "-1h" is negative`},
		{"dead_letter_max_age", "14d", `config: dead_letter_max_age: "14d" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"dead_letter_limit", "0", `config: dead_letter_limit: "0" is less than 1`},
		{"dead_letter_limit", "10000001", `config: dead_letter_limit: "10000001" is greater than 10000000`},
		{"dead_letter_limit", "1e5", `config: dead_letter_limit: "1e5" is not an integer`},
		{"replay_rate", "50", `config: replay_rate: "50" is not a rate: N/s, N/m or N/h with N an integer of at least 1 (e.g. 10/s, 600/m)`},
		{"replay_rate", "0/s", `config: replay_rate: "0/s" is not a rate: N/s, N/m or N/h with N an integer of at least 1 (e.g. 10/s, 600/m)`},
		{"replay_rate", "50/d", `config: replay_rate: "50/d" is not a rate: N/s, N/m or N/h with N an integer of at least 1 (e.g. 10/s, 600/m)`},
		{"read_timeout", "0", `config: read_timeout: "0" is not greater than zero`},
		{"read_timeout", "-1s", `config: read_timeout: "-1s" is negative`},
		{"write_timeout", "10 s", `config: write_timeout: "10 s" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"metrics_auth", "yes", `config: metrics_auth: "yes" is not a boolean (true, false, 1 or 0)`},
		{"auth_token_secret", "tokens/mailbox", `config: auth_token_secret: "tokens/mailbox" has characters outside [A-Za-z0-9._-]`},
		{"auth_token_secret", "/var/openfaas/secrets/token", `config: auth_token_secret: "/var/openfaas/secrets/token" has characters outside [A-Za-z0-9._-]`},
		{"auth_token_secret", `a\b`, `config: auth_token_secret: "a\\b" has characters outside [A-Za-z0-9._-]`},
		{"auth_token_secret", "..", `config: auth_token_secret: ".." is not a file name`},
		{"auth_token_secret", ".", `config: auth_token_secret: "." is not a file name`},
		{"auth_token_secret", "my token", `config: auth_token_secret: "my token" has characters outside [A-Za-z0-9._-]`},
		{"requeue_auth", "no", `config: requeue_auth: "no" is not a boolean (true, false, 1 or 0)`},
		{"allow_functions", "Fn", `config: allow_functions: "Fn" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"allow_functions", "fn,a.b.c", `config: allow_functions: "a.b.c" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"allow_functions", "fn,,other", `config: allow_functions: "fn,,other" has an empty entry`},
		{"allow_functions", "fn,", `config: allow_functions: "fn," has an empty entry`},
		{"allow_functions", "fn other", `config: allow_functions: "fn other" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"allow_functions", "mailbox", `config: allow_functions: "mailbox" is mailbox_function "mailbox": the mailbox does not target itself`},
		{"allow_functions", "fn,mailbox.openfaas-fn", `config: allow_functions: "mailbox.openfaas-fn" is mailbox_function "mailbox": the mailbox does not target itself`},
		{"allow_namespaces", "dev,Prod", `config: allow_namespaces: "Prod" is not a namespace (a DNS-1123 label)`},
		{"allow_namespaces", "fn.dev", `config: allow_namespaces: "fn.dev" is not a namespace (a DNS-1123 label)`},
		{"allow_namespaces", ",dev", `config: allow_namespaces: ",dev" has an empty entry`},
		{"mailbox_function", "Mailbox", `config: mailbox_function: "Mailbox" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"mailbox_function", "mailbox.", `config: mailbox_function: "mailbox." is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"status_retention", "0", `config: status_retention: "0" is not greater than zero`},
		{"max_statuses_per_function", "0", `config: max_statuses_per_function: "0" is less than 1`},
		{"signature_window", "0", `config: signature_window: "0" is not greater than zero`},
		{"signature_window", "2h", `config: signature_window: "2h" is greater than 1h0m0s`},
		{"signature_window", "500ms", `config: signature_window: "500ms" is less than 1s`},
		{"session_ttl", "30s", `config: session_ttl: "30s" is less than 1m`},
		{"session_ttl", "1000h", `config: session_ttl: "1000h" is greater than 720h0m0s`},
		{"nats_url", "http://nats:4222", `config: nats_url: "http://nats:4222" is not a nats:// or tls:// URL`},
		{"nats_url", "nats://", `config: nats_url: "nats://" has no host`},
		{"nats_url", "nats.openfaas:4222", `config: nats_url: "nats.openfaas:4222" is not a nats:// or tls:// URL`},
		{"nats_cluster_id", "faas cluster", `config: nats_cluster_id: "faas cluster" has characters outside [A-Za-z0-9_-]`},
		{"nats_client_id", "pod.name", `config: nats_client_id: "pod.name" has characters outside [A-Za-z0-9_-]`},
		{"channel_prefix", "mail.box", `config: channel_prefix: "mail.box" has characters outside [a-z0-9_-]`},
		{"channel_prefix", "Mailbox", `config: channel_prefix: "Mailbox" has characters outside [a-z0-9_-]`},
		{"gateway_url", "gateway:8080", `config: gateway_url: "gateway:8080" is not a http:// or https:// URL`},
		{"gateway_url", "ftp://gw", `config: gateway_url: "ftp://gw" is not a http:// or https:// URL`},
		{"gateway_url", "http://:8080", `config: gateway_url: "http://:8080" has no host`},
		{"gateway_url", "http://gw?x=1", `config: gateway_url: "http://gw?x=1" has a query or fragment`},
		{"gateway_url", "http://gw\x7f", `config: gateway_url: "http://gw\x7f" is not a URL`},
		{"basic_auth", "yes", `config: basic_auth: "yes" is not a boolean (true, false, 1 or 0)`},
		{"keep_credentials", "ture", `config: keep_credentials: "ture" is not a boolean (true, false, 1 or 0)`},
		{"max_inflight", "abc", `config: max_inflight: "abc" is not an integer`},
		{"max_inflight", "0", `config: max_inflight: "0" is less than 1`},
		{"max_inflight", "10001", `config: max_inflight: "10001" is greater than 10000`},
		{"max_inflight", "1.5", `config: max_inflight: "1.5" is not an integer`},
		{"upstream_timeout", "0", `config: upstream_timeout: "0" is not greater than zero`},
		{"upstream_timeout", "-1s", `config: upstream_timeout: "-1s" is negative`},
		{"upstream_timeout", "10 s", `config: upstream_timeout: "10 s" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"default_max_retries", "-1", `config: default_max_retries: "-1" is less than 0`},
		{"default_max_retries", "many", `config: default_max_retries: "many" is not an integer`},
		{"default_delay", "-60", `config: default_delay: "-60" is negative`},
		{"default_delay", "1d", `config: default_delay: "1d" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"max_retries_limit", "-5", `config: max_retries_limit: "-5" is less than 0`},
		{"max_retries_limit", "99999999999999999999", `config: max_retries_limit: "99999999999999999999" is greater than 2147483647`},
		{"max_delay", "0s", `config: max_delay: "0s" is not greater than zero`},
		{"max_delay", "2097153", `config: max_delay: "2097153" is greater than 582h32m32s`},
		{"default_backoff", "linear", `config: default_backoff: "linear" is not one of fixed, exponential`},
		{"default_backoff", "fixed,exponential", `config: default_backoff: "fixed,exponential" is not one of fixed, exponential`},
		{"default_ttl", "-1s", `config: default_ttl: "-1s" is negative`},
		{"default_ttl", "-60", `config: default_ttl: "-60" is negative`},
		{"default_ttl", "1d", `config: default_ttl: "1d" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"dead_letter_function", "DLQ", `config: dead_letter_function: "DLQ" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"dead_letter_function", "dl_q", `config: dead_letter_function: "dl_q" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"dead_letter_function", "a.b.c", `config: dead_letter_function: "a.b.c" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"dead_letter_function", "dlq.", `config: dead_letter_function: "dlq." is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"dead_letter_function", "-dlq", `config: dead_letter_function: "-dlq" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"retry_codes", "200", `config: retry_codes: 200 is a success, not a code to retry`},
		{"retry_codes", "429,204", `config: retry_codes: 204 is a success, not a code to retry`},
		{"retry_codes", "99", `config: retry_codes: "99" is less than 100`},
		{"retry_codes", "600", `config: retry_codes: "600" is greater than 599`},
		{"retry_codes", "abc", `config: retry_codes: "abc" is not an integer`},
		{"retry_codes", "429,,503", `config: retry_codes: "" is not an integer`},
		{"retry_codes", "429,", `config: retry_codes: "" is not an integer`},
		{"retry_codes", ",429", `config: retry_codes: "" is not an integer`},
		{"retry_codes", "429;503", `config: retry_codes: "429;503" is not an integer`},
		{"no_such_function_grace", "-1m", `config: no_such_function_grace: "-1m" is negative`},
		{"no_such_function_grace", "soon", `config: no_such_function_grace: "soon" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"callback_max_retries", "-1", `config: callback_max_retries: "-1" is less than 0`},
		{"callback_max_retries", "101", `config: callback_max_retries: "101" is greater than 100`},
		{"callback_max_retries", "five", `config: callback_max_retries: "five" is not an integer`},
		{"callback_allow_hosts", "*", `config: callback_allow_hosts: "*" is not a host name or IP address (want host, host:port, [ipv6]:port or *.domain[:port])`},
		{"callback_allow_hosts", "http://h/", `config: callback_allow_hosts: "http://h/" has a bad port (want host, host:port, [ipv6]:port or *.domain[:port])`},
		{"callback_allow_hosts", "a,,b", `config: callback_allow_hosts: "a,,b" has an empty entry`},
		{"callback_max_inflight", "0", `config: callback_max_inflight: "0" is less than 1`},
		{"callback_max_inflight", "33", `config: callback_max_inflight: "33" is greater than 32`},
		{"callback_delay", "0", `config: callback_delay: "0" is not greater than zero`},
		{"callback_delay", "0s", `config: callback_delay: "0s" is not greater than zero`},
		{"callback_delay", "-1s", `config: callback_delay: "-1s" is negative`},
		{"function_refresh", "0", `config: function_refresh: "0" is not greater than zero`},
		{"function_refresh", "-30", `config: function_refresh: "-30" is negative`},
		{"max_body_bytes", "0", `config: max_body_bytes: "0" is less than 1`},
		{"max_body_bytes", "67108865", `config: max_body_bytes: "67108865" is greater than 67108864`},
		{"max_body_bytes", "1MiB", `config: max_body_bytes: "1MiB" is not an integer`},
		{"listen", "8090", `config: listen: "8090" is not host:port`},
		{"listen", "localhost:", `config: listen: "localhost:" has no port number 0..65535`},
		{"listen", ":70000", `config: listen: ":70000" has no port number 0..65535`},
		{"log_level", "verbose", `config: log_level: "verbose" is not one of debug, info, warn, error`},
		{"log_format", "logfmt", `config: log_format: "logfmt" is not one of text, json`},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			got, err := Load(env(tc.key, tc.value), nil)
			if errString(err) != tc.want {
				t.Errorf("Load error = %s\nwant          %s", errString(err), tc.want)
			}
			if !equal(got, Config{}) {
				t.Errorf("Load returned %+v with an error, want the zero Config", got)
			}
		})
	}
}

func TestLoadEmptyDefaultIsInvalid(t *testing.T) {
	t.Parallel()

	// A caller default of "" is taken at its word: only nats_url accepts it.
	for _, tc := range []struct{ key, want string }{
		{"data_dir", `config: data_dir: "" is empty`},
		{"secret_mount_path", `config: secret_mount_path: "" is empty`},
		{"channel_prefix", `config: channel_prefix: "" is empty`},
		{"max_inflight", `config: max_inflight: "" is not an integer`},
		{"default_delay", `config: default_delay: "" is not a duration`},
		{"retry_codes", `config: retry_codes: "" is not an integer`},
		{"default_backoff", `config: default_backoff: "" is not one of fixed, exponential`},
		{"callback_delay", `config: callback_delay: "" is not a duration`},
		{"mailbox_function", `config: mailbox_function: "" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"dead_letter_limit", `config: dead_letter_limit: "" is not an integer`},
		{"replay_rate", `config: replay_rate: "" is not a rate: N/s, N/m or N/h with N an integer of at least 1 (e.g. 10/s, 600/m)`},
		{"requeue_auth", `config: requeue_auth: "" is not a boolean (true, false, 1 or 0)`},
	} {
		t.Run(tc.key, func(t *testing.T) {
			t.Parallel()
			_, err := Load(nil, map[string]string{tc.key: ""})
			if errString(err) != tc.want {
				t.Errorf("Load error = %s, want %s", errString(err), tc.want)
			}
		})
	}
}

func TestLoadCaps(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name string
		env  []string
		want string // "" for success
	}{
		{"default_delay above max_delay", []string{"default_delay", "2h", "max_delay", "1h"},
			"config: default_delay: 2h0m0s is greater than max_delay 1h0m0s"},
		{"default_delay equal to max_delay", []string{"default_delay", "3600", "max_delay", "1h"}, ""},
		{"built-in default_delay above max_delay", []string{"max_delay", "30s"},
			"config: default_delay: 1m0s is greater than max_delay 30s"},
		{"default_max_retries above max_retries_limit", []string{"default_max_retries", "11", "max_retries_limit", "10"},
			"config: default_max_retries: 11 is greater than max_retries_limit 10"},
		{"default_max_retries equal to max_retries_limit", []string{"default_max_retries", "5", "max_retries_limit", "5"}, ""},
		{"max_waiting_per_function above max_waiting", []string{"max_waiting", "10", "max_waiting_per_function", "11"},
			"config: max_waiting_per_function: 11 is greater than max_waiting 10"},
		{"max_waiting_bytes below 1 MiB", []string{"max_waiting_bytes", "1000"},
			`config: max_waiting_bytes: "1000" is less than 1048576`},
		{"min_retry_delay above max_delay", []string{"min_retry_delay", "2m", "max_delay", "1m", "default_delay", "1s"},
			"config: min_retry_delay: 2m0s is greater than max_delay 1m0s"},
		{"min_retry_delay zero", []string{"min_retry_delay", "0"},
			`config: min_retry_delay: "0" is not greater than zero`},
		{"no cap check when the cap is invalid", []string{"default_delay", "2h", "max_delay", "nope"},
			`config: max_delay: "nope" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{"no cap check when the default is invalid", []string{"default_max_retries", "x", "max_retries_limit", "1"},
			`config: default_max_retries: "x" is not an integer`},
		{"both caps", []string{"default_delay", "2h", "max_delay", "1h", "default_max_retries", "3", "max_retries_limit", "2"},
			"config: default_max_retries: 3 is greater than max_retries_limit 2\n" +
				"config: default_delay: 2h0m0s is greater than max_delay 1h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(env(tc.env...), nil)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if errString(err) != tc.want {
				t.Errorf("Load error =\n%s\nwant\n%s", errString(err), tc.want)
			}
		})
	}
}

func TestLoadTargets(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name string
		env  []string
		want string // "" for success
	}{
		{"mailbox listed under its own name", []string{"allow_functions", "fn,mb.dev", "mailbox_function", "mb.dev"},
			`config: allow_functions: "mb.dev" is mailbox_function "mb.dev": the mailbox does not target itself`},
		{"mailbox listed with the default namespace", []string{"allow_functions", "mb.openfaas-fn", "mailbox_function", "mb"},
			`config: allow_functions: "mb.openfaas-fn" is mailbox_function "mb": the mailbox does not target itself`},
		{"the default mailbox_function may be listed once renamed", []string{"allow_functions", "mailbox", "mailbox_function", "mb"}, ""},
		{"no self check when mailbox_function is invalid", []string{"allow_functions", "mailbox", "mailbox_function", "MB"},
			`config: mailbox_function: "MB" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		{"function in a listed namespace", []string{"allow_functions", "fn,other.dev", "allow_namespaces", "dev,openfaas-fn"}, ""},
		{"function outside the listed namespaces", []string{"allow_functions", "fn,other.dev,x.prod", "allow_namespaces", "dev"},
			`config: allow_functions: "fn" is in namespace openfaas-fn, which allow_namespaces does not list` + "\n" +
				`config: allow_functions: "x.prod" is in namespace prod, which allow_namespaces does not list`},
		{"metrics_auth without a token", []string{"metrics_auth", "true"},
			`config: metrics_auth: true needs a token: set auth_token_secret`},
		{"metrics_auth with a token", []string{"metrics_auth", "true", "auth_token_secret", "mailbox-token"}, ""},
		{"no metrics_auth check when auth_token_secret is invalid", []string{"metrics_auth", "true", "auth_token_secret", "a/b"},
			`config: auth_token_secret: "a/b" has characters outside [A-Za-z0-9._-]`},
		{"no namespace check when allow_namespaces is invalid", []string{"allow_functions", "fn", "allow_namespaces", "Dev"},
			`config: allow_namespaces: "Dev" is not a namespace (a DNS-1123 label)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(env(tc.env...), nil)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("Load error =\n%s\nwant\n%s", errString(err), tc.want)
			}
		})
	}
}

func TestLoadJoinsErrors(t *testing.T) {
	t.Parallel()

	_, err := Load(Environ([]string{
		"max_inflight=abc",
		"gateway_url=ftp://gw",
		"basic_auth=maybe",
		"log_level=loud",
		"listen=8090",
		"max_delay=-1s",
	}), nil)
	errs := joined(t, err)
	want := []string{
		`config: gateway_url: "ftp://gw" is not a http:// or https:// URL`,
		`config: basic_auth: "maybe" is not a boolean (true, false, 1 or 0)`,
		`config: max_inflight: "abc" is not an integer`,
		`config: max_delay: "-1s" is negative`,
		`config: listen: "8090" is not host:port`,
		`config: log_level: "loud" is not one of debug, info, warn, error`,
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i := range want {
		if errs[i].Error() != want[i] {
			t.Errorf("error %d = %s\nwant      %s", i, errs[i], want[i])
		}
	}
}

func TestEnviron(t *testing.T) {
	t.Parallel()

	lookup := Environ([]string{
		"gateway_url=http://a:8080",
		"gateway_url=http://b:8080", // last wins
		"channel_prefix=x=y",        // the value keeps later "="
		"nats_url=",                 // set, empty
		"novalue",                   // ignored
		"=orphan",                   // ignored
	})
	for _, tc := range []struct {
		name   string
		want   string
		wantOK bool
	}{
		{"gateway_url", "http://b:8080", true},
		{"channel_prefix", "x=y", true},
		{"nats_url", "", true},
		{"novalue", "", false},
		{"", "", false},
		{"GATEWAY_URL", "", false},
	} {
		got, ok := lookup(tc.name)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("lookup(%q) = %q, %v; want %q, %v", tc.name, got, ok, tc.want, tc.wantOK)
		}
	}

	// The environment is copied when Environ is called.
	environ := []string{"max_inflight=3"}
	lookup = Environ(environ)
	environ[0] = "max_inflight=4"
	if got, _ := lookup("max_inflight"); got != "3" {
		t.Errorf("lookup(max_inflight) = %q after the slice changed, want 3", got)
	}
}

func TestFlags(t *testing.T) {
	t.Parallel()

	environ := env(
		"gateway_url", "http://env:8080",
		"max_inflight", "8",
		"log_level", "warn",
		"default_delay", "10",
	)
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) (string, bool)
		want func(*Config)
	}{
		{"default when neither is set", nil, nil, func(*Config) {}},
		{"env beats default", nil, environ, func(c *Config) {
			c.GatewayURL = "http://env:8080"
			c.MaxInflight = 8
			c.LogLevel = slog.LevelWarn
			c.DefaultDelay = 10 * time.Second
		}},
		{"flag beats env", []string{"--gateway-url=http://flag:8080", "-max-inflight", "2", "--default-delay=1m"}, environ, func(c *Config) {
			c.GatewayURL = "http://flag:8080"
			c.MaxInflight = 2
			c.LogLevel = slog.LevelWarn // from env
			c.DefaultDelay = time.Minute
		}},
		{"bare bool flag is true", []string{"--basic-auth", "--keep-credentials"}, nil, func(c *Config) {
			c.BasicAuth = true
			c.KeepCredentials = true
		}},
		{"bool flag false beats env", []string{"--requeue-auth=false", "--auth-token-secret", "mailbox-token", "--replay-rate=5/s"},
			env("requeue_auth", "true", "allow_functions", "fn"), func(c *Config) {
				c.RequeueAuth = false
				c.AuthTokenSecret = "mailbox-token"
				c.ReplayRate = Rate{5, time.Second}
				c.AllowFunctions = []string{"fn"} // from env
			}},
		{"bool flag with value", []string{"--basic-auth=false"}, env("basic_auth", "true"), func(c *Config) {
			c.BasicAuth = false
		}},
		{"empty flag does not hide env", []string{"--gateway-url="}, environ, func(c *Config) {
			c.GatewayURL = "http://env:8080"
			c.MaxInflight = 8
			c.LogLevel = slog.LevelWarn
			c.DefaultDelay = 10 * time.Second
		}},
		{"new settings as flags", []string{"--retry-codes=429,503", "--dead-letter-function", "dlq", "--default-backoff=exponential", "--callback-delay=2s"},
			env("retry_codes", "500", "default_ttl", "1h"), func(c *Config) {
				c.RetryCodes = []int{429, 503}
				c.DeadLetterFunction = "dlq"
				c.DefaultBackoff = "exponential"
				c.CallbackDelay = 2 * time.Second
				c.DefaultTTL = time.Hour // from env
			}},
		{"empty nats-url flag embeds", []string{"--nats-url="}, env("nats_url", "nats://env:4222"), func(c *Config) {
			c.NATSURL = ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fs := flag.NewFlagSet("mailbox", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			lookup := Flags(fs, tc.env)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := Load(lookup, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := builtin()
			tc.want(&want)
			if !equal(got, want) {
				t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestFlagsInvalidValueNamesSetting(t *testing.T) {
	t.Parallel()

	fs := flag.NewFlagSet("mailbox", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	lookup := Flags(fs, env("max_inflight", "4"))
	if err := fs.Parse([]string{"--max-inflight=lots", "--basic-auth=maybe"}); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	_, err := Load(lookup, nil)
	want := `config: basic_auth: "maybe" is not a boolean (true, false, 1 or 0)` + "\n" +
		`config: max_inflight: "lots" is not an integer`
	if errString(err) != want {
		t.Errorf("Load error =\n%s\nwant\n%s", errString(err), want)
	}
}

func TestFlagsRegistration(t *testing.T) {
	t.Parallel()

	fs := flag.NewFlagSet("mailbox", flag.ContinueOnError)
	Flags(fs, nil)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if want := len(Settings()); n != want {
		t.Errorf("registered %d flags, want %d", n, want)
	}
	for _, tc := range []struct{ flag, usage string }{
		{"gateway-url", "OpenFaaS gateway URL (env gateway_url)"},
		{"max-inflight", "concurrent function invocations per connector, 1..10000 (env max_inflight)"},
		{"nats-cluster-id", "NATS Streaming cluster id (env nats_cluster_id)"},
		{"callback-delay", "first wait before a callback is retried; it doubles up to max_delay (env callback_delay)"},
	} {
		f := fs.Lookup(tc.flag)
		if f == nil {
			t.Errorf("flag %q not registered", tc.flag)
			continue
		}
		if f.Usage != tc.usage {
			t.Errorf("flag %q usage = %q, want %q", tc.flag, f.Usage, tc.usage)
		}
		if f.DefValue != "" {
			t.Errorf("flag %q DefValue = %q, want empty", tc.flag, f.DefValue)
		}
	}
	if fs.Lookup("gateway_url") != nil {
		t.Error("flag gateway_url registered with underscores")
	}
}

func TestSettings(t *testing.T) {
	t.Parallel()

	wantNames := []string{
		"backend", "nats_url", "nats_credentials_file", "nats_cluster_id", "nats_client_id",
		"jetstream_stream", "jetstream_consumer", "jetstream_replicas", "dead_letter_max_age",
		"dead_letter_limit", "max_waiting", "max_waiting_bytes", "max_waiting_per_function", "replay_rate",
		"statuses", "status_retention", "max_statuses_per_function", "channel_prefix", "gateway_url",
		"basic_auth", "secret_mount_path", "auth_token_secret", "requeue_auth", "signature_window", "session_ttl",
		"max_inflight", "upstream_timeout",
		"default_max_retries", "default_delay", "max_retries_limit", "max_delay", "min_retry_delay",
		"default_backoff", "default_ttl", "dead_letter_function",
		"allow_functions", "allow_namespaces", "mailbox_function", "retry_codes",
		"no_such_function_grace", "callback_max_retries", "callback_delay",
		"callback_allow_hosts", "callback_max_inflight", "function_refresh",
		"max_body_bytes", "keep_credentials", "listen", "read_timeout", "write_timeout", "metrics_auth",
		"data_dir", "data_dir_reserve_bytes", "log_level", "log_format",
	}
	settings := Settings()
	if len(settings) != len(wantNames) {
		t.Fatalf("Settings has %d rows, want %d", len(settings), len(wantNames))
	}
	for i, s := range settings {
		if s.Name != wantNames[i] {
			t.Errorf("Settings()[%d].Name = %q, want %q", i, s.Name, wantNames[i])
		}
		if s.Usage == "" {
			t.Errorf("setting %q has no usage", s.Name)
		}
		// A setting without a default is one whose empty value means
		// something: nats_url and nats_credentials_file say so with
		// emptyIsValue; for the others an empty value in the environment
		// is unset, which is the same as their empty default.
		emptyDefault := map[string]bool{
			"dead_letter_function": true, // no dead-letter function
			"auth_token_secret":    true, // no token
			"allow_functions":      true, // every function
			"allow_namespaces":     true, // every namespace
			"callback_allow_hosts": true, // the gateway only
		}
		if s.Default == "" && !s.emptyIsValue && !emptyDefault[s.Name] {
			t.Errorf("setting %q has no default", s.Name)
		}
		// Every built-in default parses.
		if _, err := Load(nil, map[string]string{s.Name: s.Default}); err != nil {
			t.Errorf("setting %q: its default %q does not load: %v", s.Name, s.Default, err)
		}
		if want := strings.ReplaceAll(s.Name, "_", "-"); s.FlagName() != want {
			t.Errorf("FlagName() = %q, want %q", s.FlagName(), want)
		}
	}

	// Every setting reaches the Config: a valid non-default value changes it.
	nonDefault := map[string]string{
		"backend": "jetstream", "nats_url": "tls://n:1", "nats_credentials_file": "/c", "nats_cluster_id": "c", "nats_client_id": "r0",
		"jetstream_stream": "s", "jetstream_consumer": "k", "jetstream_replicas": "3", "dead_letter_max_age": "1h",
		"dead_letter_limit": "5", "replay_rate": "1/m",
		"max_waiting": "20000", "max_waiting_bytes": "2097152", "max_waiting_per_function": "5",
		"auth_token_secret": "token", "requeue_auth": "false", "signature_window": "1m", "session_ttl": "1h",
		"allow_functions": "fn", "allow_namespaces": "dev", "mailbox_function": "mb",
		"status_retention": "1m", "max_statuses_per_function": "7", "channel_prefix": "p",
		"gateway_url": "http://g", "basic_auth": "true", "secret_mount_path": "/s", "max_inflight": "1",
		"upstream_timeout": "1", "default_max_retries": "1", "default_delay": "1", "max_retries_limit": "20",
		"max_delay": "1h", "min_retry_delay": "2s", "default_backoff": "exponential", "default_ttl": "24h",
		"dead_letter_function": "dlq.openfaas-fn", "retry_codes": "429", "no_such_function_grace": "0",
		"callback_max_retries": "0", "callback_delay": "5s", "function_refresh": "1m",
		"callback_allow_hosts": "h", "callback_max_inflight": "2",
		"max_body_bytes": "1", "keep_credentials": "1", "listen": ":1",
		"read_timeout": "1", "write_timeout": "1", "metrics_auth": "true",
		"data_dir": "/d", "data_dir_reserve_bytes": "0", "log_level": "debug", "log_format": "text",
		"statuses": "false",
	}
	for _, s := range settings {
		v, ok := nonDefault[s.Name]
		if !ok {
			t.Errorf("setting %q has no non-default value in this test", s.Name)
			continue
		}
		// What a setting needs besides itself.
		needs := map[string][]string{"metrics_auth": {"auth_token_secret", "token"}}
		got, err := Load(env(append([]string{s.Name, v}, needs[s.Name]...)...), nil)
		if err != nil {
			t.Errorf("Load(%s=%s): %v", s.Name, v, err)
			continue
		}
		base := builtin()
		if len(needs[s.Name]) > 0 {
			if base, err = Load(env(needs[s.Name]...), nil); err != nil {
				t.Fatal(err)
			}
		}
		if equal(got, base) && s.Name != "backend" { // backend has one value today
			t.Errorf("Load(%s=%s) did not change the Config", s.Name, v)
		}
	}

	// The slice is a copy.
	settings[0].Default = "changed"
	if Settings()[0].Default != "stan" {
		t.Error("changing the result of Settings changed the table")
	}
}

func TestParseSeconds(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "60", want: 60 * time.Second},
		{in: "0", want: 0},
		{in: "+5", want: 5 * time.Second},
		{in: " 30 ", want: 30 * time.Second},
		{in: "1500ms", want: 1500 * time.Millisecond},
		{in: "2m", want: 2 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "0s", want: 0},
		{in: "9223372036", want: 9223372036 * time.Second},
		{in: "-1", wantErr: `"-1" is negative`},
		{in: "-1s", wantErr: `"-1s" is negative`},
		{in: "-0", want: 0},
		{in: "9223372037", wantErr: `"9223372037" is out of range`},
		{in: "99999999999999999999", wantErr: `"99999999999999999999" is out of range`},
		{in: "", wantErr: `"" is not a duration`},
		{in: "1.5", wantErr: `"1.5" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{in: "abc", wantErr: `"abc" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{in: "+", wantErr: `"+" is not a duration (e.g. 60 for seconds, or 1m30s)`},
		{in: "10 s", wantErr: `"10 s" is not a duration (e.g. 60 for seconds, or 1m30s)`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseSeconds(tc.in)
			if tc.wantErr != "" {
				if errString(err) != tc.wantErr {
					t.Errorf("ParseSeconds(%q) error = %s, want %s", tc.in, errString(err), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSeconds(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("ParseSeconds(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestLogger(t *testing.T) {
	t.Parallel()

	t.Run("json at info", func(t *testing.T) {
		t.Parallel()
		var buf bytes.Buffer
		builtin().Logger(&buf).Debug("hidden")
		builtin().Logger(&buf).Info("shown", "k", 1)
		var line map[string]any
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("output %q is not one JSON line: %v", buf.String(), err)
		}
		if line["msg"] != "shown" || line["level"] != "INFO" || line["k"] != float64(1) {
			t.Errorf("logged %v", line)
		}
	})

	t.Run("text at debug", func(t *testing.T) {
		t.Parallel()
		c := builtin()
		c.LogFormat = "text"
		c.LogLevel = slog.LevelDebug
		var buf bytes.Buffer
		c.Logger(&buf).Debug("visible", "k", "v")
		out := buf.String()
		if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "msg=visible") || !strings.Contains(out, "k=v") {
			t.Errorf("logged %q", out)
		}
	})

	t.Run("error level hides warn", func(t *testing.T) {
		t.Parallel()
		c := builtin()
		c.LogLevel = slog.LevelError
		var buf bytes.Buffer
		c.Logger(&buf).Warn("hidden")
		if buf.Len() != 0 {
			t.Errorf("logged %q at error level", buf.String())
		}
	})
}

func TestLoadErrorIsJoin(t *testing.T) {
	t.Parallel()

	// A single problem still comes back through errors.Join, so callers can
	// always unwrap a list.
	_, err := Load(env("max_inflight", "x"), nil)
	if errs := joined(t, err); len(errs) != 1 {
		t.Errorf("got %d errors, want 1", len(errs))
	}
	var target interface{ Unwrap() []error }
	if !errors.As(err, &target) {
		t.Errorf("error %T is not a joined error", err)
	}
}

// TestStatusesOffRefusesQuotas: without statuses the quotas cannot count
// anything, so one asked for is refused, naming it, instead of being
// silently off; left at their defaults they are off without complaint.
func TestStatusesOffRefusesQuotas(t *testing.T) {
	t.Parallel()

	c, err := Load(env("statuses", "false"), nil)
	if err != nil || c.Statuses {
		t.Fatalf("Load(statuses=false) = Statuses %v, %v; want false, nil", c.Statuses, err)
	}
	if c, err := Load(env("statuses", "true", "max_waiting", "50000"), nil); err != nil || !c.Statuses {
		t.Fatalf("Load(statuses=true, max_waiting=50000) = Statuses %v, %v; want true, nil", c.Statuses, err)
	}
	for _, name := range []string{"max_waiting", "max_waiting_bytes", "max_waiting_per_function"} {
		_, err := Load(env("statuses", "false", name, "2000000"), nil)
		if err == nil || !strings.Contains(err.Error(), "config: "+name+":") || !strings.Contains(err.Error(), "statuses") {
			t.Errorf("Load(statuses=false, %s set) = %v, want an error naming %s and statuses", name, err, name)
		}
		// A caller's default counts as set: mailbox serve's or a test's.
		if _, err := Load(env("statuses", "false"), map[string]string{name: "2000000"}); err == nil {
			t.Errorf("Load(statuses=false, default %s) = nil, want an error", name)
		}
	}
}
