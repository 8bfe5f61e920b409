// Package callback decides where the connector may POST a message's
// outcome (X-Callback-Url) and dials only there.
//
// A requeue names the callback URL, so without a policy the connector
// would POST to anything its network reaches: loopback ports, cloud
// metadata, cluster services. The policy:
//
//   - A callback may go to the gateway (gateway_url's scheme, host and
//     port), and there only to /function/<name> or /async-function/<name>
//     under gateway_url's path: never to the gateway's /system API. With
//     Options.Functions, only to a function a message could go to
//     (allow_functions, allow_namespaces, never mailbox_function).
//   - Other hosts only through callback_allow_hosts: "host" (the scheme's
//     default port), "host:port", "*.example.com" or "*.example.com:port".
//   - Addresses are checked after resolution, when the connection is made
//     (Policy.DialContext dials the very address it checked, so a name
//     that resolves differently the second time gains nothing). Cloud
//     metadata, unspecified, multicast and broadcast addresses are always
//     refused. Loopback, link-local, private, CGNAT, ULA, NAT64, 6to4,
//     Teredo, documentation and reserved addresses are refused unless the
//     host is the gateway or named exactly in callback_allow_hosts (an
//     IP literal, or a name): a wildcard entry reaches public addresses
//     only.
//   - The client takes no proxy from the environment (HTTP_PROXY): a
//     proxy would make the connection on the mailbox's behalf, past the
//     address check.
//
// Check is the requeue's (and the connector's, before any call) check of
// a URL; DialContext the check of each address at dial time. Both refuse
// with an error wrapping ErrRefused.
package callback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// ErrRefused is wrapped by every refusal of a callback URL or address.
var ErrRefused = errors.New("callback refused")

// MaxURLLen bounds a callback URL: it is stored with every message.
const MaxURLLen = 2048

// Resolver looks a host name up; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Options configure a Policy.
type Options struct {
	// GatewayURL is gateway_url: callbacks may always go to its
	// functions. Required.
	GatewayURL string
	// AllowHosts are callback_allow_hosts' entries (see ParseHost).
	AllowHosts []string
	// Resolver resolves names at dial time. Defaults to
	// net.DefaultResolver.
	Resolver Resolver
	// Functions, when set, checks the function a callback to the gateway
	// would call (auth.Targets.Check): a callback there is a call to a
	// function, and must go only where a message could.
	Functions func(name string) error
}

// Policy is where callbacks may go. It is safe for concurrent use.
type Policy struct {
	gateway     endpoint
	gatewayPath string // gateway_url's path, without the trailing '/'
	exact       []Host
	wildcard    []Host
	resolver    Resolver
	functions   func(name string) error
}

// endpoint is a scheme, a normalised host and a port.
type endpoint struct{ scheme, host, port string }

// trust is how far a host may reach.
type trust int

const (
	// refused: neither the gateway nor allow-listed.
	refused trust = iota
	// public: allow-listed by a wildcard: public addresses only.
	public
	// named: the gateway or named exactly: any address but the ones
	// always refused.
	named
)

// New returns the Policy of o.
func New(o Options) (*Policy, error) {
	u, err := url.Parse(o.GatewayURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("callback: gateway_url %q is not an http or https URL", o.GatewayURL)
	}
	gw, err := endpointOf(u)
	if err != nil {
		return nil, fmt.Errorf("callback: gateway_url %q: %w", o.GatewayURL, err)
	}
	p := &Policy{gateway: gw, gatewayPath: strings.TrimRight(u.EscapedPath(), "/"), resolver: o.Resolver, functions: o.Functions}
	if p.resolver == nil {
		p.resolver = net.DefaultResolver
	}
	for _, s := range o.AllowHosts {
		h, err := ParseHost(s)
		if err != nil {
			return nil, fmt.Errorf("callback: callback_allow_hosts: %w", err)
		}
		if h.wildcard {
			p.wildcard = append(p.wildcard, h)
		} else {
			p.exact = append(p.exact, h)
		}
	}
	return p, nil
}

// Host is one callback_allow_hosts entry.
type Host struct {
	// name is a normalised host name or IP; for a wildcard, the suffix
	// after "*" (starting with '.').
	name     string
	port     string // "" for the scheme's default port
	wildcard bool
}

// ParseHost reads one callback_allow_hosts entry: a host name or IP
// address ("hooks.example.com", "10.0.0.7", "fd00::7", "[fd00::7]"), optionally with a
// port (":8443"; without one, the scheme's default port), or "*." and a
// domain of at least two labels ("*.example.com"), which matches any name
// under it, not the domain itself.
func ParseHost(s string) (Host, error) {
	bad := func(why string) (Host, error) {
		return Host{}, fmt.Errorf("%q %s (want host, host:port, [ipv6]:port or *.domain[:port])", s, why)
	}
	if s == "" || len(s) > 262 {
		return bad("is empty or too long")
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			// "[fd00::7]" without a port.
			if h2, ok := strings.CutPrefix(s, "["); ok && strings.HasSuffix(h2, "]") {
				h, p, err = strings.TrimSuffix(h2, "]"), "", nil
			}
		}
		if err != nil {
			return bad("is not host:port")
		}
		host, port = h, p
		if port != "" {
			if _, err := parsePort(port); err != nil {
				return bad("has a bad port")
			}
		}
	}
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		name := normalise(rest)
		if !validName(name) || !strings.Contains(name, ".") {
			return bad("is not *. and a domain of at least two labels")
		}
		return Host{name: "." + name, port: port, wildcard: true}, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return bad("has an IPv6 zone")
		}
		return Host{name: a.Unmap().String(), port: port}, nil
	}
	name := normalise(host)
	if !validName(name) {
		return bad("is not a host name or IP address")
	}
	return Host{name: name, port: port}, nil
}

// Check returns nil when a callback to raw may be stored and called, and
// otherwise an error wrapping ErrRefused that says why (never repeating
// the URL's query, which may hold a secret). The address a name resolves
// to is checked when it is dialled.
func (p *Policy) Check(raw string) error {
	if len(raw) > MaxURLLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrRefused, MaxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%w: not an absolute http or https URL", ErrRefused)
	}
	if u.User != nil {
		// It would be stored on the broker with the message.
		return fmt.Errorf("%w: must not hold credentials (user:password@)", ErrRefused)
	}
	e, err := endpointOf(u)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	where := net.JoinHostPort(e.host, e.port)
	if e.host == p.gateway.host && e.port == p.gateway.port {
		name, ok := p.functionPath(u.EscapedPath())
		if e.scheme != p.gateway.scheme || !ok {
			return fmt.Errorf("%w: on the gateway (gateway_url) a callback may only go to %s/function/<name> or %s/async-function/<name>", ErrRefused, p.gatewayPath, p.gatewayPath)
		}
		if p.functions != nil {
			if err := p.functions(name); err != nil {
				return fmt.Errorf("%w: a callback to the gateway calls a function, and may call only one a message could go to: %v", ErrRefused, err)
			}
		}
		return nil
	}
	t := p.trust(e.host, e.port)
	if t == refused {
		return fmt.Errorf("%w: %s is not the gateway (gateway_url) and not in callback_allow_hosts", ErrRefused, where)
	}
	if a, err := netip.ParseAddr(e.host); err == nil {
		return checkAddr(a, t)
	}
	return nil
}

// functionPath returns the function escaped, a path on the gateway,
// calls, unescaped, and whether it is a function's path at all:
// <gateway path>/function/<name>[/...] or async-function, with no dot
// segment or encoded separator that a router could resolve into another
// route.
func (p *Policy) functionPath(escaped string) (string, bool) {
	rest, ok := strings.CutPrefix(escaped, p.gatewayPath+"/")
	if !ok {
		return "", false
	}
	route, rest, _ := strings.Cut(rest, "/")
	if route != "function" && route != "async-function" {
		return "", false
	}
	name, _, _ := strings.Cut(rest, "/")
	if name == "" {
		return "", false
	}
	for seg := range strings.SplitSeq(rest, "/") {
		s, err := url.PathUnescape(seg)
		if err != nil || s == "." || s == ".." || strings.ContainsAny(s, "/\\") {
			return "", false
		}
	}
	// The gateway routes on the decoded name: %6dailbox is mailbox.
	name, _ = url.PathUnescape(name)
	return name, true
}

// trust is how far host:port may reach, as the transport dials it (the
// scheme's default port filled in).
func (p *Policy) trust(host, port string) trust {
	if host == p.gateway.host && port == p.gateway.port {
		return named
	}
	for _, h := range p.exact {
		if h.name == host && h.matchPort(port) {
			return named
		}
	}
	for _, h := range p.wildcard {
		if strings.HasSuffix(host, h.name) && len(host) > len(h.name) && h.matchPort(port) {
			return public
		}
	}
	return refused
}

func (h Host) matchPort(port string) bool {
	if h.port == "" {
		return port == "80" || port == "443"
	}
	return h.port == port
}

// endpointOf is u's scheme, normalised host and port (the scheme's
// default when none is given).
func endpointOf(u *url.URL) (endpoint, error) {
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return endpoint{}, errors.New("an IPv6 zone is not allowed")
		}
		host = a.Unmap().String()
	} else {
		host = normalise(host)
		if !validName(host) {
			return endpoint{}, errors.New("the host is not a host name or IP address")
		}
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	} else if _, err := parsePort(port); err != nil {
		return endpoint{}, err
	}
	return endpoint{scheme: u.Scheme, host: host, port: port}, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || s[0] == '0' {
		return 0, fmt.Errorf("port %q is not 1 to 65535", s)
	}
	return n, nil
}

// normalise lowercases a host name and drops a final '.', so that
// "Gateway.OpenFaaS." is "gateway.openfaas".
func normalise(s string) string { return strings.TrimSuffix(strings.ToLower(s), ".") }

// validName reports whether s is a DNS name: labels of letters, digits,
// '-' and '_', 1 to 63 bytes each, 253 in all.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
