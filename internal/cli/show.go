package cli

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/envelope"
)

func (c *command) show(ctx context.Context, args []string) error {
	fs := c.flagSet("show", "show <id>")
	args, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("show takes one id, got %d", len(args))
	}
	var d detail
	raw, err := c.client.do(ctx, http.MethodGet, idPath(args[0]), nil, &d)
	if err != nil {
		return err
	}
	if c.output == outputJSON {
		return printJSON(c.stdout, raw)
	}
	return c.printDetail(d)
}

// idPath is the API path of the dead letter with id.
func idPath(id string) string { return "/deadletters/" + url.PathEscape(id) }

func (c *command) printDetail(d detail) error {
	tw := newTable(c.stdout)
	row := func(name, value string) { fmt.Fprintf(tw, "%s:\t%s\n", name, value) }
	row("ID", cell(d.ID))
	row("Function", cell(d.Function))
	if d.Kind != "" {
		row("Kind", cell(d.Kind))
	}
	row("Reason", cell(d.Reason))
	row("Retries", strconv.Itoa(d.Retries))
	if d.Replays > 0 {
		row("Replays", strconv.Itoa(d.Replays))
	}
	row("Last status", statusText(d.LastStatus))
	row("Last error", cell(d.LastError))
	if d.LastResponse != "" {
		row("Last response", cell(d.LastResponse))
	}
	row("Accepted at", timeText(d.AcceptedAt))
	row("First attempt at", timeText(d.FirstAttemptAt))
	row("Last attempt at", timeText(d.LastAttemptAt))
	if !d.DueAt.IsZero() {
		row("Due at", timeText(d.DueAt))
	}
	row("Dead at", timeText(d.DeadAt))
	row("Policy", policyText(d.Policy))
	if err := tw.Flush(); err != nil {
		return err
	}

	var b strings.Builder
	if len(d.Header) > 0 {
		b.WriteString("\nHeaders:\n")
		names := make([]string, 0, len(d.Header))
		for name := range d.Header {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			for _, v := range d.Header[name] {
				fmt.Fprintf(&b, "  %s: %s\n", oneLine(name), oneLine(v))
			}
		}
	}
	switch {
	case d.BodyBase64 != nil:
		n := d.BodyBytes
		if body, err := base64.StdEncoding.DecodeString(*d.BodyBase64); err == nil {
			n = len(body)
		}
		fmt.Fprintf(&b, "\nBody: binary, %s (-o json has it in body_base64)\n", plural(n, "byte", "bytes"))
	case d.Body == nil || *d.Body == "":
		b.WriteString("\nBody: empty\n")
	default:
		fmt.Fprintf(&b, "\nBody (%s):\n%s", plural(len(*d.Body), "byte", "bytes"), block(*d.Body))
		if !strings.HasSuffix(*d.Body, "\n") {
			b.WriteString("\n")
		}
	}
	if _, err := fmt.Fprint(c.stdout, b.String()); err != nil {
		return err
	}
	if len(d.Deaths) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout, "\nEarlier deaths:")
	tw = newTable(c.stdout)
	fmt.Fprintln(tw, "  DEAD AT\tREASON\tRETRIES\tLAST STATUS\tLAST ERROR")
	for _, x := range d.Deaths {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", timeText(x.DeadAt), cell(x.Reason), x.Retries, statusText(x.LastStatus), cell(x.LastError))
	}
	return tw.Flush()
}

// policyText is the settings p sets, "max_retries 5, delay 10s".
func policyText(p envelope.Policy) string {
	var parts []string
	if p.MaxRetries != nil {
		parts = append(parts, "max_retries "+strconv.Itoa(*p.MaxRetries))
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
	}{{"delay", p.Delay}, {"max_delay", p.MaxDelay}, {"ttl", p.TTL}} {
		if d.v != nil {
			parts = append(parts, d.name+" "+d.v.String())
		}
	}
	for _, s := range []struct{ name, v string }{
		{"backoff", p.Backoff}, {"dead_letter_function", p.DeadLetterFunction}, {"callback_url", callback.Redact(p.CallbackURL)},
	} {
		if s.v != "" {
			parts = append(parts, s.name+" "+oneLine(s.v))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
