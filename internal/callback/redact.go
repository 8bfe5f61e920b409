package callback

import (
	"net/url"
)

// Redacted stands for what Redact removed.
const Redacted = "REDACTED"

// Redact returns raw, a callback URL, as it may be shown or logged: a
// query string, which often holds a token ("?sig=...", "?key=..."), is
// replaced by REDACTED, and so are credentials and a fragment. The stored
// message keeps the URL whole: the connector must call it. A URL that
// cannot be parsed is REDACTED as a whole.
func Redact(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Redacted
	}
	if u.User != nil {
		u.User = url.User(Redacted)
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = Redacted, false
	}
	if u.Fragment != "" || u.RawFragment != "" {
		u.Fragment, u.RawFragment = Redacted, ""
	}
	if u.Opaque != "" {
		// "http:secret" parses with everything in Opaque.
		u.Opaque = Redacted
	}
	return u.String()
}
