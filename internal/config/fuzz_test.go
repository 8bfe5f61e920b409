package config

import (
	"strings"
	"testing"
	"time"
)

// FuzzConfig loads the settings from an environment of "key=value" lines.
// Whatever the environment holds, Load never panics, every error it
// returns names the setting it is about, and a Config it returns keeps
// the rules the rest of the mailbox relies on.
func FuzzConfig(f *testing.F) {
	for _, s := range Settings() {
		f.Add(s.Name + "=" + s.Default)
	}
	for _, env := range []string{
		"",
		"max_inflight=99999999999999999999",
		"max_inflight=-0",
		"max_inflight=+5",
		"max_body_bytes=67108865",
		"default_delay=9223372036854775807",
		"default_delay=2562047h47m16.854775808s",
		"max_delay=1e9h",
		"max_delay=24d",
		"default_delay=2h\nmax_delay=1h",
		"default_max_retries=20000",
		"default_ttl=30s\ndefault_delay=60s",
		"retry_codes=,",
		"retry_codes=200",
		"retry_codes=429, 503",
		"nats_url=nats://%25",
		"nats_url=nats://a:1,,nats://b:2",
		"gateway_url=http://[::1",
		"gateway_url=http://gw:8080/?x=1",
		"gateway_url=https://gw/%2F/",
		"listen=ünï:80",
		"listen=:65536",
		"allow_functions=mailbox",
		"allow_functions=fn.dev\nallow_namespaces=prod",
		"auth_token_secret=..",
		"metrics_auth=true",
		"metrics_auth=true\nauth_token_secret=mailbox-token",
		"replay_rate=99999999999999999999/s",
		"read_timeout=0\nwrite_timeout=-1",
		"log_level=DEBUG\nlog_format=TEXT",
		"backend=Jet\u017ftream",
		"jetstream_replicas=\u0661",
	} {
		f.Add(env)
	}
	names := map[string]bool{}
	for _, s := range Settings() {
		names[s.Name] = true
	}
	f.Fuzz(func(t *testing.T, environ string) {
		lookup := Environ(strings.Split(environ, "\n"))
		c, err := Load(lookup, nil)
		if err != nil {
			for _, e := range joinedErrors(err) {
				name, _, ok := strings.Cut(strings.TrimPrefix(e.Error(), "config: "), ": ")
				if !strings.HasPrefix(e.Error(), "config: ") || !ok || !names[name] {
					t.Fatalf("error %q does not name a setting", e)
				}
			}
			return
		}
		again, err := Load(lookup, nil)
		if err != nil || !equal(again, c) {
			t.Fatalf("Load is not deterministic: %v", err)
		}
		switch {
		case c.DefaultMaxRetries < 0 || c.DefaultMaxRetries > c.MaxRetriesLimit:
			t.Fatalf("default_max_retries %d outside 0..max_retries_limit %d", c.DefaultMaxRetries, c.MaxRetriesLimit)
		case c.DefaultDelay < 0 || c.DefaultDelay > c.MaxDelay || c.MaxDelay <= 0 || c.MaxDelay > maxDelayLimit:
			t.Fatalf("default_delay %s, max_delay %s out of bounds", c.DefaultDelay, c.MaxDelay)
		case c.DefaultTTL < 0 || (c.DefaultTTL > 0 && c.DefaultTTL <= c.DefaultDelay):
			t.Fatalf("default_ttl %s with default_delay %s", c.DefaultTTL, c.DefaultDelay)
		case c.MaxInflight < 1 || c.MaxInflight > 10000:
			t.Fatalf("max_inflight %d", c.MaxInflight)
		case c.MaxBodyBytes < 1 || c.MaxBodyBytes > 64<<20:
			t.Fatalf("max_body_bytes %d", c.MaxBodyBytes)
		case c.UpstreamTimeout <= 0 || c.StatusRetention <= 0 || c.ReadTimeout <= 0 || c.WriteTimeout <= 0:
			t.Fatalf("a timeout that must be positive is not: %+v", c)
		case c.MetricsAuth && c.AuthTokenSecret == "":
			t.Fatal("metrics_auth without a token")
		case c.ReplayRate.N < 1 || c.ReplayRate.Per < time.Second:
			t.Fatalf("replay_rate %+v", c.ReplayRate)
		case strings.HasSuffix(c.GatewayURL, "/") || c.GatewayURL == "":
			t.Fatalf("gateway_url %q", c.GatewayURL)
		case len(c.RetryCodes) == 0:
			t.Fatal("no retry_codes")
		}
		for _, code := range c.RetryCodes {
			if code < 100 || code > 599 || (code >= 200 && code <= 299) {
				t.Fatalf("retry code %d", code)
			}
		}
	})
}

// joinedErrors returns the errors an errors.Join result holds.
func joinedErrors(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		return u.Unwrap()
	}
	return []error{err}
}
