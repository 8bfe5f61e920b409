package callback

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func mustPolicy(t testing.TB, o Options) *Policy {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	p := mustPolicy(t, Options{
		GatewayURL: "http://gateway.openfaas:8080",
		AllowHosts: []string{"hooks.example.com", "cb.example.com:8443", "*.partner.example", "10.0.0.7:9000", "[fd00::7]"},
	})
	ok := []string{
		"http://gateway.openfaas:8080/function/done",
		"http://Gateway.OpenFaaS.:8080/function/done.ns/sub/path?x=1",
		"http://gateway.openfaas:8080/async-function/done",
		"https://hooks.example.com/p?token=1",
		"http://hooks.example.com/",
		"https://cb.example.com:8443/x",
		"https://a.partner.example/",
		"https://a.b.partner.example:443/",
		"http://10.0.0.7:9000/",
		"http://[fd00::7]/",
	}
	for _, u := range ok {
		if err := p.Check(u); err != nil {
			t.Errorf("Check(%q) = %v, want nil", u, err)
		}
	}
	refused := []string{
		// Not the gateway's port, or scheme.
		"http://gateway.openfaas:8081/function/done",
		"https://gateway.openfaas:8080/function/done",
		// The gateway's own API, or a path a router resolves elsewhere.
		"http://gateway.openfaas:8080/system/functions",
		"http://gateway.openfaas:8080/",
		"http://gateway.openfaas:8080/function/",
		"http://gateway.openfaas:8080/function/../system/functions",
		"http://gateway.openfaas:8080/function/%2e%2e/system/functions",
		"http://gateway.openfaas:8080/function/a%2f..%2f..%2fsystem",
		"http://gateway.openfaas:8080/function/a/%2E%2E/%2E%2E/system/functions",
		// Not allow-listed.
		"http://127.0.0.1:9999/",
		"http://localhost:9999/",
		"http://169.254.169.254/latest/meta-data/",
		"http://[::1]:9999/",
		"http://[::ffff:127.0.0.1]:9999/",
		"http://2130706433/",
		"http://127.1/",
		"http://0x7f.0.0.1/",
		"http://hooks.example.com:8080/", // a port not listed
		"http://cb.example.com/",         // only :8443 listed
		"http://partner.example/",        // the wildcard's domain itself
		"http://evilpartner.example/",
		"http://10.0.0.7/",
		// Not a URL a callback can have.
		"ftp://hooks.example.com/",
		"http:hooks.example.com",
		"//hooks.example.com/",
		"http://user:pw@hooks.example.com/",
		"http://[fe80::1%25eth0]/",
		"http://hooks.example.com:0/",
		"http://hooks.example.com:65536/",
		"http://" + strings.Repeat("a", MaxURLLen) + "/",
		"",
	}
	for _, u := range refused {
		if err := p.Check(u); !errors.Is(err, ErrRefused) {
			t.Errorf("Check(%q) = %v, want ErrRefused", u, err)
		}
	}
}

// A literal address of an exactly named host is checked at requeue too:
// metadata is never reached, even when listed.
func TestCheckMetadataEvenWhenListed(t *testing.T) {
	p := mustPolicy(t, Options{GatewayURL: "http://gw:8080", AllowHosts: []string{"169.254.169.254", "[fd00:ec2::254]"}})
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"} {
		if err := p.Check(u); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "metadata") {
			t.Errorf("Check(%q) = %v, want a metadata refusal", u, err)
		}
	}
}

func TestCheckErrorKeepsTheQuery(t *testing.T) {
	p := mustPolicy(t, Options{GatewayURL: "http://gw:8080"})
	err := p.Check("http://elsewhere.example/p?token=s3cret")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Check = %v, want a refusal that does not repeat the query", err)
	}
}

func TestGatewayURLWithPath(t *testing.T) {
	p := mustPolicy(t, Options{GatewayURL: "https://gw.example.com/openfaas/"})
	if err := p.Check("https://gw.example.com/openfaas/function/done"); err != nil {
		t.Errorf("function under the gateway's path: %v", err)
	}
	if err := p.Check("https://gw.example.com/function/done"); !errors.Is(err, ErrRefused) {
		t.Errorf("function outside the gateway's path: %v, want refused", err)
	}
}

func TestParseHost(t *testing.T) {
	for _, s := range []string{"a.example.com", "A.Example.COM.", "host:1", "10.0.0.1", "10.0.0.1:80", "[::1]", "[::1]:8080", "*.example.com", "*.example.com:8443", "svc_1.ns"} {
		if _, err := ParseHost(s); err != nil {
			t.Errorf("ParseHost(%q) = %v, want nil", s, err)
		}
	}
	for _, s := range []string{"", "*", "*.com", "*example.com", "a.*.com", "http://a.com", "a.com/p", "a.com:0", "a.com:99999", "a.com:x", "[fe80::1%eth0]", "a..com", "-a.com", "a b", "user@a.com"} {
		if _, err := ParseHost(s); err == nil {
			t.Errorf("ParseHost(%q) = nil, want an error", s)
		}
	}
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr  string
		t     trust
		allow bool
	}{
		{"93.184.216.34", public, true},
		{"2606:2800:220:1:248:1893:25c8:1946", public, true},
		{"127.0.0.1", public, false},
		{"::ffff:127.0.0.1", public, false},
		{"::1", public, false},
		{"10.1.2.3", public, false},
		{"172.31.0.1", public, false},
		{"192.168.1.1", public, false},
		{"100.64.0.1", public, false},
		{"169.254.1.1", public, false},
		{"fe80::1", public, false},
		{"fd12::1", public, false},
		{"64:ff9b::7f00:1", public, false},
		{"2002:7f00:1::", public, false},
		{"0.0.0.0", named, false},
		{"::", named, false},
		{"224.0.0.1", named, false},
		{"255.255.255.255", named, false},
		{"ff02::1", named, false},
		{"169.254.169.254", named, false},
		{"fd00:ec2::254", named, false},
		{"127.0.0.1", named, true},
		{"10.1.2.3", named, true},
		{"93.184.216.34", refused, false},
	} {
		err := checkAddr(netip.MustParseAddr(c.addr), c.t)
		if (err == nil) != c.allow {
			t.Errorf("checkAddr(%s, %d) = %v, want allowed %v", c.addr, c.t, err, c.allow)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("checkAddr(%s) = %v, does not wrap ErrRefused", c.addr, err)
		}
	}
}

// fakeResolver answers every name with addrs.
type fakeResolver struct{ addrs []netip.Addr }

func (f fakeResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return f.addrs, nil
}

// listener counts the requests a local server gets.
func listener(t *testing.T) (srv *httptest.Server, calls *atomic.Int64) {
	calls = &atomic.Int64{}
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	t.Cleanup(srv.Close)
	return srv, calls
}

// DNS rebinding: a name allowed by a wildcard that resolves to loopback
// when the call is made is not dialled.
func TestDialRefusesANameThatResolvesInside(t *testing.T) {
	srv, calls := listener(t)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p := mustPolicy(t, Options{
		GatewayURL: "http://gw:8080",
		AllowHosts: []string{"*.partner.example:" + port, "metadata.partner.test:" + port},
		Resolver:   fakeResolver{[]netip.Addr{netip.MustParseAddr("127.0.0.1")}},
	})
	u := "http://hook.partner.example:" + port + "/"
	if err := p.Check(u); err != nil {
		t.Fatalf("Check(%q) = %v: the name is allowed, only its address is not", u, err)
	}
	res, err := p.Client(5*time.Second, 1).Post(u, "text/plain", strings.NewReader("x"))
	if err == nil {
		res.Body.Close()
	}
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("POST %s: %v, want a loopback refusal", u, err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the local listener got %d requests, want 0", n)
	}
}

// A name named exactly may resolve inside, but never to metadata.
func TestDialNamedHost(t *testing.T) {
	srv, _ := listener(t)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, c := range []struct {
		addr string
		ok   bool
	}{{"127.0.0.1", true}, {"169.254.169.254", false}} {
		p := mustPolicy(t, Options{
			GatewayURL: "http://gw:8080",
			AllowHosts: []string{"hooks.internal:" + port},
			Resolver:   fakeResolver{[]netip.Addr{netip.MustParseAddr(c.addr)}},
		})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := p.DialContext(ctx, "tcp", "hooks.internal:"+port)
		cancel()
		if conn != nil {
			conn.Close()
		}
		if (err == nil) != c.ok {
			t.Errorf("dial hooks.internal resolving to %s: %v, want ok %v", c.addr, err, c.ok)
		}
	}
}

// The gateway is always reached, on loopback too; another port of the
// same host is not, and no proxy from the environment is used.
func TestClientReachesTheGatewayOnly(t *testing.T) {
	gw, gwCalls := listener(t)
	other, otherCalls := listener(t)
	t.Setenv("HTTP_PROXY", other.URL)
	t.Setenv("http_proxy", other.URL)
	p := mustPolicy(t, Options{GatewayURL: gw.URL})
	c := p.Client(5*time.Second, 1)
	res, err := c.Post(gw.URL+"/function/done", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatalf("POST to the gateway: %v", err)
	}
	res.Body.Close()
	if _, err := c.Post(other.URL+"/", "text/plain", strings.NewReader("x")); !errors.Is(err, ErrRefused) {
		t.Errorf("POST to another port: %v, want refused", err)
	}
	if gwCalls.Load() != 1 || otherCalls.Load() != 0 {
		t.Errorf("gateway got %d, other listener (also the proxy) %d; want 1 and 0", gwCalls.Load(), otherCalls.Load())
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"":                                   "",
		"https://h/p":                        "https://h/p",
		"https://h/p?token=s3cret&x=1":       "https://h/p?REDACTED",
		"https://h/p?":                       "https://h/p?REDACTED",
		"https://u:pw@h/p#frag":              "https://REDACTED@h/p#REDACTED",
		"http:opaque-secret?x":               "http:REDACTED?REDACTED",
		"http://h/%zz?s3cret":                "REDACTED",
		"https://gw:8080/function/done?sig=": "https://gw:8080/function/done?REDACTED",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCheckGatewayFunctionIsATarget: a callback to the gateway calls a
// function, which must pass Options.Functions (auth.Targets.Check in the
// mailbox), however its name is spelled in the path.
func TestCheckGatewayFunctionIsATarget(t *testing.T) {
	var asked []string
	p := mustPolicy(t, Options{GatewayURL: "http://gateway.openfaas:8080", Functions: func(name string) error {
		asked = append(asked, name)
		if name != "done" {
			return errors.New(name + " is not allowed")
		}
		return nil
	}})
	if err := p.Check("http://gateway.openfaas:8080/function/done/sub"); err != nil {
		t.Errorf("allowed function: %v", err)
	}
	for _, u := range []string{
		"http://gateway.openfaas:8080/function/mailbox/deadletter/x",
		"http://gateway.openfaas:8080/async-function/other.ns",
		"http://gateway.openfaas:8080/function/%6dailbox/deadletter/x",
	} {
		if err := p.Check(u); !errors.Is(err, ErrRefused) {
			t.Errorf("Check(%s) = %v, want refused", u, err)
		}
	}
	if want := []string{"done", "mailbox", "other.ns", "mailbox"}; strings.Join(asked, " ") != strings.Join(want, " ") {
		t.Errorf("functions checked %v, want %v", asked, want)
	}
	// Other hosts are not functions: not asked.
	asked = nil
	_ = mustPolicy(t, Options{GatewayURL: "http://gateway.openfaas:8080", AllowHosts: []string{"hooks.example.com"},
		Functions: func(string) error { asked = append(asked, "?"); return nil }}).Check("https://hooks.example.com/function/x")
	if len(asked) != 0 {
		t.Errorf("Functions asked about a callback to another host")
	}
}
