package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Rate is at most N events in any window of length Per.
type Rate struct {
	N   int
	Per time.Duration
}

// PerSecond is r as events a second; 0 for the zero Rate.
func (r Rate) PerSecond() float64 {
	if r.Per <= 0 {
		return 0
	}
	return float64(r.N) / r.Per.Seconds()
}

// String writes r as ParseRate reads it, e.g. "50/s"; "0" for the zero
// Rate.
func (r Rate) String() string {
	unit := ""
	switch r.Per {
	case time.Second:
		unit = "s"
	case time.Minute:
		unit = "m"
	case time.Hour:
		unit = "h"
	default:
		if r == (Rate{}) {
			return "0"
		}
		return strconv.Itoa(r.N) + "/" + r.Per.String()
	}
	return strconv.Itoa(r.N) + "/" + unit
}

// ParseRate parses a rate written "N/s", "N/m" or "N/h", N a decimal
// integer of at least 1 (no sign), as the com.openfaas.mailbox.rate
// annotation and the replay_rate setting are. Surrounding white space is
// ignored; the error quotes s.
func ParseRate(s string) (Rate, error) {
	bad := fmt.Errorf("%q is not a rate: N/s, N/m or N/h with N an integer of at least 1 (e.g. 10/s, 600/m)", s)
	n, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, bad
	}
	var per time.Duration
	switch unit {
	case "s":
		per = time.Second
	case "m":
		per = time.Minute
	case "h":
		per = time.Hour
	default:
		return Rate{}, bad
	}
	n = strings.TrimSpace(n)
	if n == "" || strings.IndexFunc(n, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return Rate{}, bad
	}
	c, err := strconv.Atoi(n)
	if err != nil || c < 1 {
		return Rate{}, bad
	}
	return Rate{N: c, Per: per}, nil
}
