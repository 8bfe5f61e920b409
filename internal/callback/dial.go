package callback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// maxDialTimeout bounds connecting to a callback endpoint even when the
// request timeout is long.
const maxDialTimeout = 10 * time.Second

// DialContext connects to addr ("host:port", as http.Transport passes it)
// if the policy lets a callback reach it: the host must be the gateway or
// allow-listed, and each address it resolves to is checked before it is
// dialled. The address dialled is the one checked, so a name that
// resolves to another address the second time (DNS rebinding) gains
// nothing. A refusal wraps ErrRefused.
func (p *Policy) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	} else {
		host = normalise(host)
	}
	t := p.trust(host, port)
	if t == refused {
		return nil, fmt.Errorf("%w: %s is not the gateway (gateway_url) and not in callback_allow_hosts", ErrRefused, net.JoinHostPort(host, port))
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = p.resolver.LookupNetIP(ctx, ipNetwork(network), host); err != nil {
		return nil, err
	}
	dialer := &net.Dialer{
		Timeout:   maxDialTimeout,
		KeepAlive: 30 * time.Second,
		// The address actually connected to is checked once more: the
		// check above is on what the resolver said, this on what the
		// kernel is asked for.
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: %v", ErrRefused, err)
			}
			return checkAddr(ap.Addr(), t)
		},
	}
	var errs []error
	for _, a := range addrs {
		if err := checkAddr(a, t); err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := dialer.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%w: %s resolves to no address", ErrRefused, host)
	}
	return nil, errors.Join(errs...)
}

// ipNetwork is the resolver's network for a dial network.
func ipNetwork(network string) string {
	switch network {
	case "tcp4":
		return "ip4"
	case "tcp6":
		return "ip6"
	}
	return "ip"
}

// Client returns the client callbacks are POSTed with: it dials only
// through the policy and uses no proxy, whatever the environment says.
// timeout bounds each call (zero: the context's only); up to maxIdle idle
// connections are kept.
func (p *Policy) Client(timeout time.Duration, maxIdle int) *http.Client {
	if maxIdle < 1 {
		maxIdle = http.DefaultMaxIdleConnsPerHost
	}
	tlsTimeout := maxDialTimeout
	if timeout > 0 && timeout < tlsTimeout {
		tlsTimeout = timeout
	}
	return &http.Client{
		Transport: &http.Transport{
			// No Proxy: a proxy would connect on the mailbox's behalf,
			// past the address check.
			Proxy:                 nil,
			DialContext:           p.DialContext,
			MaxIdleConns:          maxIdle,
			MaxIdleConnsPerHost:   maxIdle,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   tlsTimeout,
			ExpectContinueTimeout: time.Second,
		},
		Timeout: timeout,
		// The stored body must not be POSTed anywhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
