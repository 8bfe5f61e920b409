package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// actionFlags are the flags replay and purge share.
type actionFlags struct {
	filter
	allDeadLetters bool
	wait           bool
}

func (a *actionFlags) register(fs *flag.FlagSet, verb string) {
	a.filter.register(fs)
	fs.BoolVar(&a.allDeadLetters, "all-dead-letters", false, verb+" every dead letter: a bulk "+verb+" with no filter")
	fs.BoolVar(&a.wait, "wait", true, "follow a bulk job until it ends, showing progress on stderr")
}

// bulkQuery checks how ids and filters are combined and returns the
// filter as API parameters; nil when ids are given.
func (c *command) bulkQuery(verb string, a *actionFlags, ids []string) (url.Values, error) {
	switch {
	case len(ids) > 0 && (!a.empty() || a.allDeadLetters):
		return nil, usagef("%s takes ids or filters (or --all-dead-letters), not both", verb)
	case len(ids) > 0:
		return nil, nil
	case a.empty() && !a.allDeadLetters:
		return nil, usagef("%s needs ids, a filter (--function, --reason, --since, --until, -q) or --all-dead-letters", verb)
	case !a.empty() && a.allDeadLetters:
		return nil, usagef("--all-dead-letters takes every dead letter: leave out the filters, or --all-dead-letters")
	}
	return a.query(c.now())
}

// maxRetries is the largest retries a replay takes.
const maxRetries = 10000

func (c *command) replay(ctx context.Context, args []string) error {
	fs := c.flagSet("replay", "replay [--retries n] <id>...\n       mailbox deadletters replay [--retries n] [--wait=false] (filters | --all-dead-letters)")
	var a actionFlags
	a.register(fs, "replay")
	retries := fs.String("retries", "", "attempts a replayed message counts as made, 0 to 10000 (default 0: it gets its whole max_retries again)")
	ids, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	q, err := c.bulkQuery("replay", &a, ids)
	if err != nil {
		return err
	}
	params := url.Values{}
	if *retries != "" {
		n, err := strconv.Atoi(*retries)
		if err != nil || n < 0 || n > maxRetries {
			return usagef("--retries %q: want a whole number from 0 to %d", *retries, maxRetries)
		}
		params.Set("retries", strconv.Itoa(n))
	}
	if len(ids) > 0 {
		return c.each(ctx, "replay", ids, func(id string) (string, string, url.Values) {
			return http.MethodPost, idPath(id) + "/replay", params
		})
	}
	for k, v := range params {
		q[k] = v
	}
	return c.runJob(ctx, http.MethodPost, "/deadletters/replay", q, a.wait)
}

func (c *command) purge(ctx context.Context, args []string) error {
	fs := c.flagSet("purge", "purge <id>...\n       mailbox deadletters purge [--yes] [--wait=false] (filters | --all-dead-letters)")
	var a actionFlags
	a.register(fs, "purge")
	yes := fs.Bool("yes", false, "purge without asking how many first")
	ids, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	q, err := c.bulkQuery("purge", &a, ids)
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		return c.each(ctx, "purge", ids, func(id string) (string, string, url.Values) {
			return http.MethodDelete, idPath(id), nil
		})
	}
	if !*yes {
		ok, err := c.confirm(ctx, q)
		if err != nil || !ok {
			return err
		}
	}
	if a.allDeadLetters {
		q.Set("all", "true")
	}
	return c.runJob(ctx, http.MethodDelete, "/deadletters", q, a.wait)
}

// errAborted is a bulk purge not confirmed.
var errAborted = errors.New("purge aborted: nothing deleted")

// confirm asks on stderr whether to purge the dead letters matching q,
// saying how many match, and reads the answer from stdin. It reports
// false, with no error, when none match.
func (c *command) confirm(ctx context.Context, q url.Values) (bool, error) {
	count := url.Values{"limit": {"1"}}
	for k, v := range q {
		count[k] = v
	}
	var p page
	if _, err := c.client.do(ctx, http.MethodGet, "/deadletters", count, &p); err != nil {
		return false, err
	}
	n := plural(p.Total, "dead letter", "dead letters")
	switch {
	case p.Total == 0 && len(q) == 0:
		fmt.Fprintln(c.stderr, "No dead letters: nothing to purge.")
		return false, nil
	case p.Total == 0:
		fmt.Fprintf(c.stderr, "No dead letters match %s: nothing to purge.\n", describe(q))
		return false, nil
	case len(q) == 0:
		fmt.Fprintf(c.stderr, "Purge all %s? [y/N] ", n)
	default:
		fmt.Fprintf(c.stderr, "Purge %s matching %s? [y/N] ", n, describe(q))
	}
	answer, err := bufio.NewReader(c.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("reading the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return true, nil
	case "":
		if errors.Is(err, io.EOF) {
			fmt.Fprintln(c.stderr)
			return false, fmt.Errorf("%w (no answer on stdin; --yes purges without asking)", errAborted)
		}
	}
	return false, errAborted
}

// each replays or purges ids one by one; the API's errors are printed
// on stderr and counted, a failure to reach the API stops.
func (c *command) each(ctx context.Context, verb string, ids []string, request func(id string) (method, path string, q url.Values)) error {
	var (
		raws     []json.RawMessage
		outcomes []outcome
		errs     []error
	)
	for _, id := range ids {
		method, path, q := request(id)
		var out outcome
		raw, err := c.client.do(ctx, method, path, q, &out)
		if _, ok := errors.AsType[*APIError](err); ok {
			errs = append(errs, err)
			if len(ids) > 1 {
				fmt.Fprintf(c.stderr, "mailbox: %s: %v\n", oneLine(id), err)
			}
			continue
		}
		if err != nil {
			return err
		}
		raws = append(raws, raw)
		outcomes = append(outcomes, out)
	}
	if c.output == outputJSON {
		if raws == nil {
			raws = []json.RawMessage{}
		}
		if err := printValue(c.stdout, raws); err != nil {
			return err
		}
	} else if len(outcomes) > 0 {
		if err := c.printOutcomes(verb, outcomes); err != nil {
			return err
		}
	}
	switch {
	case len(errs) == 0:
		return nil
	case len(ids) == 1:
		return errs[0]
	}
	return fmt.Errorf("%d of %d %ss failed", len(errs), len(ids), verb)
}

func (c *command) printOutcomes(verb string, outcomes []outcome) error {
	tw := newTable(c.stdout)
	if verb == "replay" {
		fmt.Fprintln(tw, "ID\tFUNCTION\tSTATUS\tRETRIES\tDUE AT")
	} else {
		fmt.Fprintln(tw, "ID\tFUNCTION\tSTATUS")
	}
	for _, o := range outcomes {
		status := cell(o.Status)
		if o.Repeated {
			status += " (already)"
		}
		if verb == "replay" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", cell(o.ID), cell(o.Function), status, o.Retries, timeText(o.DueAt))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", cell(o.ID), cell(o.Function), status)
		}
	}
	return tw.Flush()
}

// runJob starts a bulk job with method on path?q, follows it when wait
// is set, and prints it. A job that failed on some dead letters, or
// stopped before its end, is an error.
func (c *command) runJob(ctx context.Context, method, path string, q url.Values, wait bool) error {
	var j job
	raw, err := c.client.do(ctx, method, path, q, &j)
	if err != nil {
		return err
	}
	if wait {
		if raw, j, err = c.follow(ctx, raw, j); err != nil {
			return err
		}
	}
	if c.output == outputJSON {
		err = printJSON(c.stdout, raw)
	} else {
		err = c.printJob(j, wait)
	}
	if err != nil {
		return err
	}
	switch {
	case j.Failed > 0:
		return fmt.Errorf("%s job %s: %d of %d failed", j.Action, oneLine(j.ID), j.Failed, j.Matched)
	case j.State == jobStopped:
		return fmt.Errorf("%s job %s stopped before its end (the mailbox stopped): run the command again to take up the rest", j.Action, oneLine(j.ID))
	}
	return nil
}

// jobPath is the API path of the job with id.
func jobPath(id string) string { return "/deadletters/jobs/" + url.PathEscape(id) }

// follow polls the job until it is no longer running, printing its
// progress on stderr when it changes.
func (c *command) follow(ctx context.Context, raw []byte, j job) ([]byte, job, error) {
	delay := c.poll
	last := ""
	for {
		if p := progress(j); p != last {
			fmt.Fprintln(c.stderr, p)
			last = p
		}
		if j.State != jobRunning {
			return raw, j, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, j, fmt.Errorf("%s job %s goes on in the mailbox: %w", j.Action, oneLine(j.ID), ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, c.maxPoll)
		var next job
		var err error
		if raw, err = c.client.do(ctx, http.MethodGet, jobPath(j.ID), nil, &next); err != nil {
			return nil, j, fmt.Errorf("following %s job %s: %w", j.Action, oneLine(j.ID), err)
		}
		j = next
	}
}

// progress reads "replay job X: running, 12 of 42 taken (done 10,
// skipped 1, failed 1)".
func progress(j job) string {
	return fmt.Sprintf("%s job %s: %s, %d of %d taken (done %d, skipped %d, failed %d)",
		j.Action, oneLine(j.ID), j.State, j.Done+j.Skipped+j.Failed, j.Matched, j.Done, j.Skipped, j.Failed)
}

func (c *command) printJob(j job, waited bool) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Job %s: %s %s, matched %d, done %d, skipped %d, failed %d\n",
		oneLine(j.ID), j.Action, j.State, j.Matched, j.Done, j.Skipped, j.Failed)
	for _, e := range j.Errors {
		fmt.Fprintf(&b, "  error: %s\n", oneLine(e))
	}
	fmt.Fprintf(&b, "Started at %s", timeText(j.StartedAt))
	if !j.FinishedAt.IsZero() {
		fmt.Fprintf(&b, ", finished at %s", timeText(j.FinishedAt))
	}
	b.WriteString("\n")
	if !waited && j.State == jobRunning {
		fmt.Fprintf(&b, "Follow it at %s%s\n", redact(c.client.base), jobPath(j.ID))
	}
	_, err := fmt.Fprint(c.stdout, b.String())
	return err
}
