package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// maxPageSize is the largest page the API gives.
const maxPageSize = 500

// reasons are why a message becomes a dead letter.
var reasons = []string{envelope.ReasonMaxRetries, envelope.ReasonRejected, envelope.ReasonExpired, envelope.ReasonNoSuchFunction, envelope.ReasonMalformed}

// filter is the filter flags of list, replay and purge.
type filter struct {
	function, reason, since, until, q string
}

func (f *filter) register(fs *flag.FlagSet) {
	fs.StringVar(&f.function, "function", "", "only dead letters of this function (name or name.namespace)")
	fs.StringVar(&f.reason, "reason", "", "only dead letters of this reason: "+strings.Join(reasons, ", "))
	fs.StringVar(&f.since, "since", "", "only dead letters dead at or after this RFC 3339 time, or this long ago (24h)")
	fs.StringVar(&f.until, "until", "", "only dead letters dead before this RFC 3339 time, or this long ago")
	fs.StringVar(&f.q, "q", "", "only dead letters whose id, function or last error contains this text")
}

func (f *filter) empty() bool { return *f == filter{} }

// query is the filter as API parameters. A duration in --since or
// --until is a time that long before now.
func (f *filter) query(now time.Time) (url.Values, error) {
	q := url.Values{}
	for _, p := range []struct{ name, value string }{
		{"function", f.function}, {"reason", f.reason}, {"since", f.since}, {"until", f.until}, {"q", f.q},
	} {
		if p.value == "" {
			continue
		}
		v := p.value
		if p.name == "since" || p.name == "until" {
			t, err := timeFlag(v, now)
			if err != nil {
				return nil, usagef("--%s %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z, or a duration ago such as 24h", p.name, v)
			}
			v = t
		}
		q.Set(p.name, v)
	}
	return q, nil
}

func timeFlag(v string, now time.Time) (string, error) {
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d).UTC().Format(time.RFC3339), nil
	}
	if _, err := time.Parse(time.RFC3339, v); err != nil {
		return "", err
	}
	return v, nil
}

// describe is the filter in q as "function=x reason=y".
func describe(q url.Values) string {
	var parts []string
	for _, name := range []string{"function", "reason", "since", "until", "q"} {
		if v := q.Get(name); v != "" {
			parts = append(parts, name+"="+oneLine(v))
		}
	}
	return strings.Join(parts, " ")
}

func (c *command) list(ctx context.Context, args []string) error {
	fs := c.flagSet("list", "list [--function f] [--reason r] [--since t] [--until t] [-q text] [--limit n] [--cursor c | --all]")
	var f filter
	f.register(fs)
	limit := fs.Int("limit", 0, "dead letters per page, 1 to 500 (default 50, or 500 with --all)")
	cursor := fs.String("cursor", "", "list from this next_cursor of an earlier list")
	all := fs.Bool("all", false, "list every page, following next_cursor")
	args, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return usagef("list takes no arguments, got %q: filter with --function, --reason, --since, --until or -q", args)
	}
	q, err := f.query(c.now())
	if err != nil {
		return err
	}
	switch {
	case *limit < 0 || *limit > maxPageSize:
		return usagef("--limit %d: want 1 to %d", *limit, maxPageSize)
	case *limit > 0:
		q.Set("limit", strconv.Itoa(*limit))
	case *all:
		q.Set("limit", strconv.Itoa(maxPageSize))
	}
	if *cursor != "" {
		q.Set("cursor", *cursor)
	}

	var (
		items []json.RawMessage // as received, for JSON
		shown []entry
		p     page
		last  rawPage
	)
	for {
		p = page{}
		raw, err := c.client.do(ctx, http.MethodGet, "/deadletters", q, &p)
		if err != nil {
			return err
		}
		if !*all {
			if c.output == outputJSON {
				return printJSON(c.stdout, raw)
			}
			return c.printList(p.Items, p)
		}
		last = rawPage{}
		if err := json.Unmarshal(raw, &last); err != nil {
			return err
		}
		items = append(items, last.Items...)
		shown = append(shown, p.Items...)
		if p.NextCursor == "" {
			break
		}
		if p.NextCursor == q.Get("cursor") {
			return fmt.Errorf("the API answered cursor %s again: stopping", p.NextCursor)
		}
		q.Set("cursor", p.NextCursor)
	}
	if c.output == outputJSON {
		if items == nil {
			items = []json.RawMessage{}
		}
		return printValue(c.stdout, rawPage{Items: items, Total: last.Total, Counts: last.Counts})
	}
	return c.printList(shown, p)
}

// printList prints items as a table, then a summary of p.
func (c *command) printList(items []entry, p page) error {
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "ID\tFUNCTION\tREASON\tRETRIES\tLAST STATUS\tDEAD AT")
	for _, e := range items {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n",
			cell(e.ID), cell(e.Function), cell(e.Reason), e.Retries, statusText(e.LastStatus), timeText(e.DeadAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(c.stdout, summary(len(items), p))
	return err
}

// summary reads "Showing 2 of 3 matching (more: --all, or --cursor 7).
// All dead letters: fn1/max_retries 2, fn2/rejected 1."
func summary(shown int, p page) string {
	var b strings.Builder
	if shown == p.Total {
		fmt.Fprintf(&b, "%s match.", plural(p.Total, "dead letter", "dead letters"))
	} else {
		fmt.Fprintf(&b, "Showing %d of %d matching.", shown, p.Total)
	}
	if p.NextCursor != "" {
		fmt.Fprintf(&b, " More: --all, or --cursor %s.", oneLine(p.NextCursor))
	}
	if len(p.Counts) > 0 {
		parts := make([]string, len(p.Counts))
		for i, n := range p.Counts {
			parts[i] = fmt.Sprintf("%s/%s %d", cell(n.Function), cell(n.Reason), n.Count)
		}
		fmt.Fprintf(&b, " All dead letters by function/reason: %s.", strings.Join(parts, ", "))
	}
	return b.String()
}
