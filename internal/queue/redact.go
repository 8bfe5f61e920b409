package queue

import "strings"

// RedactURL is urls, a NATS server URL or a comma-separated list of them
// (nats_url), with each one's user information replaced by [redacted]:
// the form to log. The user part alone may be a NATS token, so the whole
// of it goes, not only a password as url.URL.Redacted does. It works on
// the text, not on a parsed URL, so a value that does not parse is
// redacted all the same.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		parts[i] = redactOne(p)
	}
	return strings.Join(parts, ",")
}

func redactOne(u string) string {
	start := 0
	if i := strings.Index(u, "://"); i >= 0 {
		start = i + len("://")
	}
	// The authority ends at the path, query or fragment; its user
	// information ends at its last @ (a password may hold an unescaped one).
	end := len(u)
	if i := strings.IndexAny(u[start:], "/?#"); i >= 0 {
		end = start + i
	}
	at := strings.LastIndex(u[start:end], "@")
	if at < 0 {
		return u
	}
	return u[:start] + "[redacted]" + u[start+at:]
}
