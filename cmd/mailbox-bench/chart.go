package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Chart files written into the -out directory.
const (
	latenessChart = "bench-lateness.svg"
	ratesChart    = "bench-rates.svg"
)

var colors = map[string]string{"stan": "#1f77b4", "jetstream": "#d62728"}

// ceColor marks the OpenFaaS CE queue-worker's figure.
const ceColor = "#999"

func color(backend string) string {
	if c, ok := colors[backend]; ok {
		return c
	}
	return "#555"
}

// writeCharts writes the lateness and rates charts into dir.
func writeCharts(dir string, results []*result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, latenessChart), latenessSVG(results), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ratesChart), ratesSVG(results), 0o644)
}

// svg accumulates one chart.
type svg struct{ bytes.Buffer }

func newSVG(w, h int) *svg {
	s := &svg{}
	fmt.Fprintf(s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(s, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	return s
}

func (s *svg) text(x, y float64, anchor, style, text string) {
	fmt.Fprintf(s, `<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`+"\n", x, y, anchor, style, escape(text))
}

func (s *svg) line(x1, y1, x2, y2 float64, style string) {
	fmt.Fprintf(s, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" %s/>`+"\n", x1, y1, x2, y2, style)
}

func (s *svg) end() []byte {
	s.WriteString("</svg>\n")
	return s.Bytes()
}

func escape(t string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(t))
	return b.String()
}

// plot is the drawing area inside a chart's margins.
type plot struct{ left, top, width, height float64 }

func (p plot) right() float64  { return p.left + p.width }
func (p plot) bottom() float64 { return p.top + p.height }

// latenessSVG draws each backend's lateness distribution as a CDF on a
// logarithmic time axis, with the p99 target.
func latenessSVG(results []*result) []byte {
	const w, h = 760, 440
	p := plot{left: 60, top: 50, width: 670, height: 320}
	s := newSVG(w, h)

	// The axis spans whole decades from 0.1 ms to past the largest value
	// and the target.
	lo := 0.1
	hi := float64(targetLatenessP) / float64(time.Millisecond) * 2
	var title []string
	for _, r := range results {
		if l := r.Lateness; len(l.Sorted) > 0 {
			hi = max(hi, float64(l.Sorted[len(l.Sorted)-1])/float64(time.Millisecond))
			title = append(title, fmt.Sprintf("%s %s", thousands(int64(l.Messages)), r.Backend))
		}
	}
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	x := func(ms float64) float64 {
		ms = min(max(ms, lo), hi)
		return p.left + p.width*math.Log10(ms/lo)/math.Log10(hi/lo)
	}
	y := func(f float64) float64 { return p.bottom() - p.height*f }

	rate := 0
	for _, r := range results {
		rate = max(rate, r.Lateness.Rate)
	}
	s.text(w/2, 22, "middle", `font-size="15" font-weight="bold"`,
		fmt.Sprintf("Delivery lateness at %s messages/s falling due (CDF)", thousands(int64(rate))))
	s.text(w/2, 40, "middle", `fill="#555"`, fmt.Sprintf("arrival at the sink minus due time, each stored %v to %v before it; ", leadMin, leadMax)+strings.Join(title, ", ")+" messages")

	// Grid and axes.
	for d := lo; d <= hi*1.001; d *= 10 {
		s.line(x(d), p.top, x(d), p.bottom(), `stroke="#ddd"`)
		s.text(x(d), p.bottom()+16, "middle", "", durationLabel(d))
	}
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 1} {
		s.line(p.left, y(f), p.right(), y(f), `stroke="#ddd"`)
		s.text(p.left-6, y(f)+4, "end", "", fmt.Sprintf("%.0f%%", 100*f))
	}
	s.line(p.left, y(0.99), p.right(), y(0.99), `stroke="#999" stroke-dasharray="2,3"`)
	s.text(p.right()-4, y(0.99)+13, "end", `fill="#777"`, "99%")
	tx := x(float64(targetLatenessP) / float64(time.Millisecond))
	s.line(tx, p.top, tx, p.bottom(), `stroke="#2a2" stroke-width="1.5" stroke-dasharray="6,4"`)
	s.text(tx-4, p.top+12, "end", `fill="#2a2"`, "target p99 <= "+ms(targetLatenessP))
	s.text(p.left+p.width/2, h-20, "middle", "", "lateness (log scale; below 0.1 ms drawn at 0.1 ms)")
	fmt.Fprintf(s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", p.left, p.top, p.width, p.height)

	// One step curve per backend, thinned to at most 2000 points, with
	// its legend in the bottom right corner, which a CDF leaves empty.
	legend := 0
	shown := 0
	for _, r := range results {
		if len(r.Lateness.Sorted) > 0 {
			shown++
		}
	}
	for _, r := range results {
		l := r.Lateness
		n := len(l.Sorted)
		if n == 0 {
			continue
		}
		var pts strings.Builder
		step := max(1, n/2000)
		for i := 0; i < n; i += step {
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(float64(l.Sorted[i])/float64(time.Millisecond)), y(float64(i+1)/float64(n)))
		}
		fmt.Fprintf(&pts, "%.1f,%.1f", x(float64(l.Sorted[n-1])/float64(time.Millisecond)), y(1))
		fmt.Fprintf(s, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color(r.Backend), pts.String())

		ly := p.bottom() - 14 - float64(shown-1-legend)*18
		lx := p.right() - 330
		s.line(lx, ly-4, lx+24, ly-4, fmt.Sprintf(`stroke="%s" stroke-width="3"`, color(r.Backend)))
		s.text(lx+30, ly, "start", "", fmt.Sprintf("%s: p50 %s, p99 %s, max %s",
			r.Backend, ms(l.quantile(0.5)), ms(l.quantile(0.99)), ms(l.quantile(1))))
		legend++
	}
	return s.end()
}

// durationLabel writes a tick of the lateness axis.
func durationLabel(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%g s", ms/1000)
	}
	return fmt.Sprintf("%g ms", ms)
}

// ratesSVG draws the rates side by side per backend: the server's raw
// publish ceiling, requeues through the API, the HTTP ceiling and
// deliveries, with the CE queue-worker's deliveries for reference.
func ratesSVG(results []*result) []byte {
	const w, h = 760, 440
	p := plot{left: 70, top: 50, width: 660, height: 310}
	s := newSVG(w, h)
	metrics := []struct {
		name string
		of   func(*result) float64
	}{
		{"raw durable publish", func(r *result) float64 { return r.Raw.rate() }},
		{"requeue via HTTP API", func(r *result) float64 { return r.Ingest.rate() }},
		{"HTTP ceiling", func(r *result) float64 { return r.Ceiling.rate() }},
		{"deliveries to sink", func(r *result) float64 { return r.Delivery.rate() }},
	}
	top := float64(ceQueueWorker)
	for _, r := range results {
		for _, m := range metrics {
			top = max(top, m.of(r))
		}
	}
	tick := niceStep(top / 5)
	top = math.Ceil(top*1.1/tick) * tick
	y := func(v float64) float64 { return p.bottom() - p.height*v/top }

	s.text(w/2, 22, "middle", `font-size="15" font-weight="bold"`, "Rates per second, per backend")
	s.text(w/2, 40, "middle", `fill="#555"`, "requeue target: 90% of raw publish; delivery target: 50% of the HTTP ceiling")
	for v := 0.0; v <= top*1.0001; v += tick {
		s.line(p.left, y(v), p.right(), y(v), `stroke="#ddd"`)
		s.text(p.left-6, y(v)+4, "end", "", thousands(round(v)))
	}

	// Each metric is a group with a bar per backend; deliveries add the CE
	// queue-worker's for reference.
	type bar struct {
		v    float64
		fill string
	}
	group := p.width / float64(len(metrics))
	width := min(60, group*0.8/float64(len(results)+1))
	for i, m := range metrics {
		var bars []bar
		for _, r := range results {
			bars = append(bars, bar{m.of(r), color(r.Backend)})
		}
		if i == len(metrics)-1 {
			bars = append(bars, bar{ceQueueWorker, ceColor})
		}
		gx := p.left + group*float64(i) + (group-width*float64(len(bars)))/2
		for j, b := range bars {
			bx := gx + width*float64(j)
			fmt.Fprintf(s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", bx+2, y(b.v), width-4, p.bottom()-y(b.v), b.fill)
			s.text(bx+width/2, y(b.v)-4, "middle", `font-size="11"`, thousands(round(b.v)))
		}
		s.text(p.left+group*(float64(i)+0.5), p.bottom()+18, "middle", "", m.name)
	}
	fmt.Fprintf(s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", p.left, p.top, p.width, p.height)
	legend := []struct{ name, fill string }{}
	for _, r := range results {
		legend = append(legend, struct{ name, fill string }{r.Backend, color(r.Backend)})
	}
	legend = append(legend, struct{ name, fill string }{"OpenFaaS CE queue-worker (deliveries, measured before)", ceColor})
	lx := p.left + 10
	for _, l := range legend {
		fmt.Fprintf(s, `<rect x="%.1f" y="%.1f" width="14" height="14" fill="%s"/>`+"\n", lx, float64(h)-34, l.fill)
		s.text(lx+20, float64(h)-22, "start", "", l.name)
		lx += 40 + 7*float64(len(l.name))
	}
	return s.end()
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}
