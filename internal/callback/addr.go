package callback

import (
	"fmt"
	"net/netip"
)

// rangeOf is a named set of addresses.
type rangeOf struct {
	what     string
	prefixes []netip.Prefix
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// alwaysRefused are never dialled, whatever the host: nothing a callback
// should reach lives there, and the metadata services hand out cloud
// credentials.
var alwaysRefused = []rangeOf{
	{"a cloud metadata address", prefixes(
		"169.254.169.254/32", // AWS, GCP, Azure, OpenStack, DigitalOcean
		"169.254.170.2/32",   // AWS ECS task metadata
		"169.254.170.23/32",  // AWS EKS pod identity
		"100.100.100.200/32", // Alibaba Cloud
		"168.63.129.16/32",   // Azure wire server
		"fd00:ec2::254/128",  // AWS over IPv6
		"fd00:ec2::23/128",   // AWS EKS pod identity over IPv6
	)},
	{"an unspecified or this-network address", prefixes("0.0.0.0/8", "::/128")},
	{"a multicast or broadcast address", prefixes("224.0.0.0/4", "255.255.255.255/32", "ff00::/8")},
}

// notPublic are dialled only for the gateway and hosts named exactly in
// callback_allow_hosts.
var notPublic = []rangeOf{
	{"a loopback address", prefixes("127.0.0.0/8", "::1/128")},
	{"a link-local address", prefixes("169.254.0.0/16", "fe80::/10")},
	{"a private address", prefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")},
	{"a shared (CGNAT) address", prefixes("100.64.0.0/10")},
	// These carry an IPv4 address inside an IPv6 one, which a gateway on
	// the path may turn into a private IPv4 address.
	{"an IPv4-embedding IPv6 address (NAT64, 6to4, Teredo, IPv4-compatible)", prefixes(
		"64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32", "::/96",
	)},
	{"a reserved or documentation address", prefixes(
		"192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
		"100::/64", "2001:db8::/32",
	)},
}

// checkAddr returns nil when a host trusted t may be reached at a, and
// otherwise an error wrapping ErrRefused that names the kind of address.
func checkAddr(a netip.Addr, t trust) error {
	if t == refused {
		return fmt.Errorf("%w: %s is not the gateway and not in callback_allow_hosts", ErrRefused, a)
	}
	// ::ffff:127.0.0.1 is 127.0.0.1 to the kernel.
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return fmt.Errorf("%w: no address", ErrRefused)
	}
	for _, r := range alwaysRefused {
		if in(a, r.prefixes) {
			return fmt.Errorf("%w: %s is %s", ErrRefused, a, r.what)
		}
	}
	if t == named {
		return nil
	}
	for _, r := range notPublic {
		if in(a, r.prefixes) {
			return fmt.Errorf("%w: %s is %s, which only the gateway or a host named exactly in callback_allow_hosts may be", ErrRefused, a, r.what)
		}
	}
	return nil
}

func in(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
