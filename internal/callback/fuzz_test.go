package callback

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fuzzPolicy is the policy the fuzz targets check against: a gateway, an
// exact name, an exact private address and a wildcard.
func fuzzPolicy(t testing.TB, r Resolver) *Policy {
	return mustPolicy(t, Options{
		GatewayURL: "http://gateway.openfaas:8080",
		AllowHosts: []string{"hooks.example.com", "10.0.0.7:9000", "*.partner.example"},
		Resolver:   r,
	})
}

// FuzzCheck: Check never panics, and a URL it accepts is an http or https
// URL without credentials to the gateway's functions or an allowed host,
// whose literal address, if any, is not one a callback must not reach.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		"http://gateway.openfaas:8080/function/done?x=1",
		"http://gateway.openfaas:8080/system/functions",
		"http://gateway.openfaas:8080/function/%2e%2e/system",
		"https://hooks.example.com/p",
		"http://10.0.0.7:9000/",
		"http://a.partner.example/",
		"http://127.0.0.1:9999/",
		"http://[::ffff:169.254.169.254]/",
		"http://user@hooks.example.com/",
		"http:hooks.example.com",
		"HTTP://HOOKS.EXAMPLE.COM./",
		"http://hooks.example.com:443/",
	} {
		f.Add(s)
	}
	p := fuzzPolicy(f, nil)
	f.Fuzz(func(t *testing.T, raw string) {
		err := p.Check(raw)
		if err != nil {
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("Check(%q) = %v, does not wrap ErrRefused", raw, err)
			}
			return
		}
		u, perr := url.Parse(raw)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.Host == "" {
			t.Fatalf("Check(%q) accepted a URL that is not plain http(s)", raw)
		}
		host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		switch {
		case host == "gateway.openfaas" && port == "8080":
			path := u.EscapedPath()
			if u.Scheme != "http" || !(strings.HasPrefix(path, "/function/") || strings.HasPrefix(path, "/async-function/")) {
				t.Fatalf("Check(%q) accepted a path on the gateway that is not a function's", raw)
			}
			if dec, _ := url.PathUnescape(path); strings.Contains(dec, "/../") || strings.HasSuffix(dec, "/..") {
				t.Fatalf("Check(%q) accepted a dot segment on the gateway", raw)
			}
		case host == "hooks.example.com" && (port == "80" || port == "443"):
		case host == "10.0.0.7" && port == "9000":
		case strings.HasSuffix(host, ".partner.example") && (port == "80" || port == "443"):
		default:
			if a, err := netip.ParseAddr(host); err == nil && a.Unmap().String() == "10.0.0.7" && port == "9000" {
				return // the listed address, written another way
			}
			t.Fatalf("Check(%q) accepted host %q port %q, which is neither the gateway nor allowed", raw, host, port)
		}
		if a, err := netip.ParseAddr(host); err == nil {
			a = a.Unmap()
			if a.IsUnspecified() || a.IsMulticast() || a.String() == "169.254.169.254" {
				t.Fatalf("Check(%q) accepted address %s", raw, a)
			}
		}
	})
}

// oneAddr resolves every name to one address.
type oneAddr netip.Addr

func (a oneAddr) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.Addr(a)}, nil
}

// FuzzDialContext: for any host, port and address the host resolves to,
// DialContext refuses exactly what it must, judged by the standard
// library's own classification of the address. The context is cancelled,
// so nothing is ever dialled: an address that passes fails on the
// context instead.
// metadataAddrs are the cloud metadata services the policy documents, as
// the oracle knows them (an hour's run found the oracle knowing two only).
var metadataAddrs = []string{"169.254.169.254", "169.254.170.2", "169.254.170.23", "100.100.100.200",
	"168.63.129.16", "fd00:ec2::254", "fd00:ec2::23"}

func FuzzDialContext(f *testing.F) {
	for _, c := range []struct {
		host string
		port uint16
		ip   string
	}{
		{"a.partner.example", 80, "127.0.0.1"},
		{"a.partner.example", 443, "93.184.216.34"},
		{"hooks.example.com", 80, "10.1.2.3"},
		{"hooks.example.com", 80, "169.254.169.254"},
		{"gateway.openfaas", 8080, "127.0.0.1"},
		{"elsewhere.example", 80, "93.184.216.34"},
		{"10.0.0.7", 9000, "10.0.0.7"},
		{"a.partner.example", 80, "::ffff:10.0.0.1"},
		{"a.partner.example", 80, "fe80::1"},
	} {
		f.Add(c.host, c.port, netip.MustParseAddr(c.ip).AsSlice())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.Fuzz(func(t *testing.T, host string, port uint16, ip []byte) {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		p := fuzzPolicy(t, oneAddr(a))
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		c, err := p.DialContext(ctx, "tcp", addr)
		if c != nil {
			c.Close()
			t.Fatalf("DialContext(%q) connected with a cancelled context", addr)
		}
		refusedErr := errors.Is(err, ErrRefused)

		h := strings.TrimSuffix(strings.ToLower(host), ".")
		target := a
		if lit, err := netip.ParseAddr(host); err == nil {
			h, target = lit.Unmap().String(), lit
		}
		target = target.Unmap().WithZone("")
		ps := strconv.Itoa(int(port))
		named := (h == "gateway.openfaas" && ps == "8080") || (h == "hooks.example.com" && (ps == "80" || ps == "443")) ||
			(h == "10.0.0.7" && ps == "9000")
		wild := !named && strings.HasSuffix(h, ".partner.example") && (ps == "80" || ps == "443")
		// 0.0.0.0/8 is "this network", which netip does not call
		// unspecified but the kernel may route to this host.
		thisNetwork := target.Is4() && target.As4()[0] == 0
		never := target.IsUnspecified() || thisNetwork || target.IsMulticast() || target == netip.MustParseAddr("255.255.255.255") ||
			slices.Contains(metadataAddrs, target.String())
		inside := target.IsLoopback() || target.IsPrivate() || target.IsLinkLocalUnicast() || target.IsLinkLocalMulticast()
		switch {
		case !named && !wild, never, wild && inside:
			if !refusedErr {
				t.Fatalf("DialContext(%q) resolving to %s = %v, want refused", addr, a, err)
			}
		case named && !never:
			if refusedErr {
				t.Fatalf("DialContext(%q) resolving to %s = %v, want it allowed", addr, a, err)
			}
		}
	})
}

// FuzzRedact: Redact never panics, is idempotent, and what it returns
// holds no query, credentials or fragment of the URL.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{"https://h/p?token=s3cret", "http://u:p@h/#x", "http:opaque?q", "http://h/%zz", "", "?", "http://h/p?"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := Redact(raw)
		if Redact(r) != r {
			t.Fatalf("Redact(%q) = %q, not idempotent: %q", raw, r, Redact(r))
		}
		if r == "" || r == Redacted {
			return
		}
		u, err := url.Parse(r)
		if err != nil {
			t.Fatalf("Redact(%q) = %q does not parse: %v", raw, r, err)
		}
		if (u.RawQuery != "" && u.RawQuery != Redacted) || (u.User != nil && u.User.String() != Redacted) || (u.Fragment != "" && u.Fragment != Redacted) {
			t.Fatalf("Redact(%q) = %q keeps a query, credentials or a fragment", raw, r)
		}
		// The query is not moved into the part of the URL Redact keeps:
		// what precedes the redacted query is what Redact makes of the URL
		// without its query. (Looking for the query's text there found
		// it where it was not moved: in the escaped host "%B0" followed by
		// zeros, and spanning the end of the path and the "?".)
		if i := strings.Index(raw, "?"); i >= 0 && !strings.Contains(raw[:i], "#") {
			if _, err := url.Parse(raw[:i]); err == nil {
				head, _, _ := strings.Cut(r, "?")
				want, _, _ := strings.Cut(Redact(raw[:i]), "?")
				if head != want {
					t.Fatalf("Redact(%q) = %q, but without its query %q: the query changed what is kept", raw, r, Redact(raw[:i]))
				}
			}
		}
	})
}

// FuzzParseHost: an entry ParseHost accepts is matched by what it names,
// and a wildcard never by its own domain.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"hooks.example.com", "*.example.com:8443", "[::1]:80", "10.0.0.1", "a:b:c", "*.", "*.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHost(s)
		if err != nil {
			return
		}
		if h.name == "" || (h.wildcard && (!strings.HasPrefix(h.name, ".") || strings.Count(h.name, ".") < 2)) {
			t.Fatalf("ParseHost(%q) = %+v", s, h)
		}
		port := h.port
		if port == "" {
			port = "443"
		}
		p := &Policy{gateway: endpoint{host: "gw.invalid", port: "1"}}
		name := h.name
		if h.wildcard {
			if p2 := (&Policy{wildcard: []Host{h}}); p2.trust(name[1:], port) != refused {
				t.Fatalf("wildcard %q matches its own domain", s)
			}
			name = "x" + name
			p.wildcard = []Host{h}
		} else {
			p.exact = []Host{h}
		}
		if p.trust(name, port) == refused {
			t.Fatalf("ParseHost(%q) = %+v, which does not match %s:%s", s, h, name, port)
		}
	})
}
