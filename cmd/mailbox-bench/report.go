package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets from the issue, as ratios within one run.
const (
	targetIngest    = 0.90                  // of the raw durable publish rate
	targetDelivery  = 0.50                  // of the HTTP ceiling
	targetLatenessP = 50 * time.Millisecond // p99
	targetRSSBytes  = 50_000_000            // 50 MB, with targetWaiting waiting
	targetWaiting   = 1_000_000
	// ceQueueWorker is the OpenFaaS CE queue-worker's deliveries per
	// second, measured on the same machine (max_inflight fixed at 1).
	ceQueueWorker = 1300
)

// otherWarn is the share of the machine's CPU other processes may use
// during a phase before the table warns about it.
const otherWarn = 0.05

// row is one line of a backend's table.
type row struct {
	metric, value, target, ratio, verdict string
}

// verdict is a row's verdict on a target.
func verdict(pass bool) string {
	if pass {
		return "PASS"
	}
	return "MISS"
}

// rows turns a backend's result into its table.
func rows(r *result) []row {
	var out []row
	add := func(metric, value, target, ratio, verdict string) {
		out = append(out, row{metric, value, target, ratio, verdict})
	}
	if r.Raw.OK > 0 {
		add("raw durable publish", perSecond(r.Raw.rate(), "msg"), "ceiling", "", "")
	}
	if r.Schedule.OK > 0 {
		ratio := ""
		if raw := r.Raw.rate(); raw > 0 {
			ratio = fmt.Sprintf("%.1f%% of raw", 100*r.Schedule.rate()/raw)
		}
		add("  backend Schedule, no HTTP", perSecond(r.Schedule.rate(), "msg"), "diagnostic", ratio, "")
	}
	if r.Ingest.OK > 0 {
		v := perSecond(r.Ingest.rate(), "req")
		if r.Ingest.Failed > 0 {
			v += fmt.Sprintf(" (%d failed)", r.Ingest.Failed)
		}
		ratio, tgt := "", fmt.Sprintf(">= %.0f%% of raw", 100*targetIngest)
		if raw := r.Raw.rate(); raw > 0 {
			x := r.Ingest.rate() / raw
			add("requeue via HTTP API", v, tgt, fmt.Sprintf("%.1f%% of raw", 100*x), verdict(x >= targetIngest))
		} else {
			add("requeue via HTTP API", v, tgt, ratio, "")
		}
	}
	if r.Ceiling.OK > 0 {
		add("HTTP ceiling (trivial 202)", perSecond(r.Ceiling.rate(), "req"), "reference", "", "")
	}
	if d := r.Delivery; d.Messages > 0 {
		tgt := fmt.Sprintf(">= %.0f%% of HTTP ceiling", 100*targetDelivery)
		if c := r.Ceiling.rate(); c > 0 {
			x := d.rate() / c
			add("deliveries to sink", perSecond(d.rate(), "msg"), tgt, fmt.Sprintf("%.1f%% of ceiling", 100*x), verdict(x >= targetDelivery))
		} else {
			add("deliveries to sink", perSecond(d.rate(), "msg"), tgt, "", "")
		}
		add("  first delivery after", d.First.Round(time.Millisecond).String(), fmt.Sprintf("%s messages, %s calls", thousands(int64(d.Messages)), thousands(int64(d.Calls))), "", "")
		add("  vs CE queue-worker", fmt.Sprintf("%s/s", thousands(ceQueueWorker)), "well above", fmt.Sprintf("%.1fx", d.rate()/ceQueueWorker), "")
	}
	if l := r.Lateness; l.Messages > 0 {
		load := fmt.Sprintf("at %s/s falling due", thousands(int64(l.Rate)))
		add("lateness p50", ms(l.quantile(0.5)), load, "", "")
		p99 := l.quantile(0.99)
		add("lateness p99", ms(p99), "<= "+ms(targetLatenessP), fmt.Sprintf("%.2fx target", float64(p99)/float64(targetLatenessP)), verdict(p99 <= targetLatenessP))
		add("lateness max", ms(l.quantile(1)), fmt.Sprintf("%s messages, %s calls", thousands(int64(l.Messages)), thousands(int64(l.Calls))), "", "")
		add("  stores behind plan, at most", ms(l.StoreBehind), fmt.Sprintf("each stored %v to %v before due", leadMin, leadMax), "", "")
	}
	if b := r.Backlog; b.Waiting > 0 {
		add("store waiting messages", fmt.Sprintf("%s in %s", thousands(int64(b.Waiting)), b.StoreTook.Round(100*time.Millisecond)),
			fmt.Sprintf("%d writers", storeWorkers), perSecond(b.storeRate(), "msg"), "")
		v := fmt.Sprintf("%.1f MiB", float64(b.PeakRSSKiB)/1024)
		if !b.Settled {
			v += " (still growing)"
		}
		tgt := fmt.Sprintf("<= 50 MB at %s", thousands(targetWaiting))
		x := float64(b.PeakRSSKiB) * 1024 / targetRSSBytes
		v2 := verdict(x <= 1 && b.Settled)
		if b.Waiting < targetWaiting {
			v2 += fmt.Sprintf(" (at %s)", thousands(int64(b.Waiting)))
		}
		add("connector peak RSS", v, tgt, fmt.Sprintf("%.2fx target", x), v2)
		add("  connector RSS / threads", fmt.Sprintf("%.1f MiB / %d", float64(b.RSSKiB)/1024, b.Threads),
			fmt.Sprintf("healthy after %s", b.Healthy.Round(10*time.Millisecond)), "", "")
		add("  bench process RSS", fmt.Sprintf("%.0f MiB", float64(b.ProcessRSSKiB)/1024), "embedded server + bench, after storing", "", "")
	}
	return out
}

// writeTables prints one table per backend, then any failed phase.
func writeTables(w io.Writer, results []*result) {
	for _, r := range results {
		fmt.Fprintf(w, "\n%s\n", r.Backend)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "metric\tmeasured\ttarget\tratio\tresult")
		for _, x := range rows(r) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.metric, x.value, x.target, x.ratio, x.verdict)
		}
		_ = tw.Flush()
		var other []string
		for _, p := range r.Other {
			other = append(other, fmt.Sprintf("%s %.1f%%", p.Phase, 100*p.Share))
			if p.Share > otherWarn {
				fmt.Fprintf(w, "WARNING: other processes used %.0f%% of the CPU during %s: its figures are not this run's alone\n", 100*p.Share, p.Phase)
			}
		}
		if len(other) > 0 {
			fmt.Fprintf(w, "CPU used by other processes, share of the machine: %s\n", strings.Join(other, ", "))
		}
		for _, err := range r.Errs {
			fmt.Fprintf(w, "FAILED: %v\n", err)
		}
	}
}

func perSecond(f float64, unit string) string { return thousands(round(f)) + " " + unit + "/s" }

func ms(d time.Duration) string {
	f := float64(d) / float64(time.Millisecond)
	switch {
	case f >= 100 || f <= -100:
		return fmt.Sprintf("%.0f ms", f)
	case f >= 10 || f <= -10:
		return fmt.Sprintf("%.1f ms", f)
	default:
		return fmt.Sprintf("%.2f ms", f)
	}
}

// thousands writes n with comma separators: 1234567 is 1,234,567.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// Targets of the end-to-end mode, from issue 13 (on the 2-core
// machine, burst of 20,000 requeues of 1 KiB due 1 s later).
var e2eTargetDelivery = map[string]float64{"jetstream": 8000, "stan": 6000} // msg/s

const (
	e2eTargetBurstP99 = 250 * time.Millisecond
	e2eTargetPacedP99 = 20 * time.Millisecond
	// e2eTargetStatusCost is the most statuses may cost of delivery
	// throughput, measured with them on and off in one run.
	e2eTargetStatusCost = 0.10
)

// e2eRows turns one end-to-end result into its table.
func e2eRows(r *e2eResult) []row {
	var out []row
	add := func(metric, value, target, ratio, verdict string) {
		out = append(out, row{metric, value, target, ratio, verdict})
	}
	if b := r.Burst; b.Messages > 0 && len(b.Late) > 0 {
		load := fmt.Sprintf("%s requeues of burst, due %v later", thousands(int64(b.Messages)), b.Delay)
		add("ingest (burst)", perSecond(b.ingestRate(), "req"), load, "", "")
		v := perSecond(b.deliveryRate(), "msg")
		if tgt, ok := e2eTargetDelivery[r.Backend]; ok {
			add("delivery, end to end", v, ">= "+perSecond(tgt, "msg"), fmt.Sprintf("%.2fx target", b.deliveryRate()/tgt), verdict(b.deliveryRate() >= tgt))
		} else {
			add("delivery, end to end", v, "", "", "")
		}
		add("  first sent to last delivered", b.Delivered.Round(time.Millisecond).String(), fmt.Sprintf("%s calls at the sink", thousands(int64(b.Calls))), "", "")
		add("burst lateness p50", ms(b.quantile(0.5)), "arrival minus due_at answered", "", "")
		p99 := b.quantile(0.99)
		add("burst lateness p99", ms(p99), "<= "+ms(e2eTargetBurstP99), fmt.Sprintf("%.2fx target", float64(p99)/float64(e2eTargetBurstP99)), verdict(p99 <= e2eTargetBurstP99))
		add("burst lateness max", ms(b.quantile(1)), "", "", "")
		if r.Statuses {
			add("  statuses dropped", thousands(round(r.StatusesDropped)), "mailbox_status_dropped_total after the burst", "", "")
		}
	}
	if p := r.Paced; p.Messages > 0 {
		add("paced lateness p50", ms(p.quantile(0.5)), fmt.Sprintf("%s requeues at %s/s", thousands(int64(p.Messages)), thousands(int64(p.Rate))), "", "")
		p99 := p.quantile(0.99)
		add("paced lateness p99", ms(p99), "<= "+ms(e2eTargetPacedP99), fmt.Sprintf("%.2fx target", float64(p99)/float64(e2eTargetPacedP99)), verdict(p99 <= e2eTargetPacedP99))
		add("paced lateness max", ms(p.quantile(1)), fmt.Sprintf("sends behind plan at most %s", ms(p.StoreBehind)), "", "")
	}
	if r.PeakRSSKiB > 0 {
		add("mailbox serve peak RSS", fmt.Sprintf("%.1f MiB", float64(r.PeakRSSKiB)/1024), "after the burst", "", fmt.Sprintf("%d threads", r.Threads))
	}
	if r.PeakRSSEndKiB > 0 {
		add("  peak RSS at the end", fmt.Sprintf("%.1f MiB", float64(r.PeakRSSEndKiB)/1024), "after the paced load", "", "")
	}
	return out
}

// writeE2ETables prints one table per end-to-end run, then, for a backend
// run with statuses on and off, what statuses cost.
func writeE2ETables(w io.Writer, results []*e2eResult) {
	for _, r := range results {
		fmt.Fprintf(w, "\ne2e: mailbox serve, %s, %s, max_inflight %d\n", r.Backend, statusesLabel(r.Statuses), r.Inflight)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "metric\tmeasured\ttarget\tratio\tresult")
		for _, x := range e2eRows(r) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.metric, x.value, x.target, x.ratio, x.verdict)
		}
		_ = tw.Flush()
		fmt.Fprintf(w, "CPU used by other processes, share of the machine: %.1f%%\n", 100*r.Other)
		if r.Other > otherWarn {
			fmt.Fprintf(w, "WARNING: other processes used %.0f%% of the CPU: these figures are not this run's alone\n", 100*r.Other)
		}
		for _, err := range r.Errs {
			fmt.Fprintf(w, "FAILED: %v\n", err)
		}
	}
	for _, on := range results {
		for _, off := range results {
			if on.Backend != off.Backend || !on.Statuses || off.Statuses || len(on.Errs) > 0 || len(off.Errs) > 0 || off.Burst.deliveryRate() <= 0 {
				continue
			}
			cost := 1 - on.Burst.deliveryRate()/off.Burst.deliveryRate()
			verdict := "MISS"
			if cost <= e2eTargetStatusCost {
				verdict = "PASS"
			}
			fmt.Fprintf(w, "\ne2e: %s: statuses cost %.1f%% of delivery (%s on, %s off; ingest %s on, %s off), target <= %.0f%%: %s\n",
				on.Backend, 100*cost, perSecond(on.Burst.deliveryRate(), "msg"), perSecond(off.Burst.deliveryRate(), "msg"),
				perSecond(on.Burst.ingestRate(), "req"), perSecond(off.Burst.ingestRate(), "req"), 100*e2eTargetStatusCost, verdict)
		}
	}
}
