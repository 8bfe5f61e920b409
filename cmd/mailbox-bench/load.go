package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// load is what a closed-loop rate measurement counted inside its window.
type load struct {
	OK, Failed int64
	Window     time.Duration
	FirstErr   error
}

// add counts m in l: rounds of one measurement add up.
func (l *load) add(m load) {
	l.OK += m.OK
	l.Failed += m.Failed
	l.Window += m.Window
	if l.FirstErr == nil {
		l.FirstErr = m.FirstErr
	}
}

// rate is successful operations per second.
func (l load) rate() float64 {
	if l.Window <= 0 {
		return 0
	}
	return float64(l.OK) / l.Window.Seconds()
}

// hammer calls op from workers goroutines, each again as soon as the last
// call returns, for warmup and then window. Only calls that end inside the
// window count, or the first success after it when none came inside. It
// fails when nothing succeeded.
func hammer(ctx context.Context, workers int, warmup, window time.Duration, op func(ctx context.Context) error) (load, error) {
	var (
		ok, failed atomic.Int64
		lastOK     atomic.Int64 // UnixNano of the last success counted
		errOnce    sync.Once
		firstErr   error
	)
	from := time.Now().Add(warmup)
	to := from.Add(window)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				err := op(ctx)
				now := time.Now()
				// Past the window, a call still counts while none has
				// succeeded: on a loaded machine one call may outlast a
				// short window, and the rate is then over the time taken.
				if now.After(to) && (ok.Load() > 0 || err != nil) {
					return
				}
				if now.Before(from) {
					continue
				}
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				ok.Add(1)
				for last := lastOK.Load(); now.UnixNano() > last && !lastOK.CompareAndSwap(last, now.UnixNano()); last = lastOK.Load() {
				}
			}
		})
	}
	wg.Wait()
	window = max(window, time.Unix(0, lastOK.Load()).Sub(from))
	l := load{OK: ok.Load(), Failed: failed.Load(), Window: window, FirstErr: firstErr}
	if err := ctx.Err(); err != nil {
		return l, err
	}
	if l.OK == 0 {
		return l, fmt.Errorf("no call succeeded in %v (%d failed, first: %v)", window, l.Failed, l.FirstErr)
	}
	return l, nil
}

// newClient is the load's HTTP client: one keep-alive connection per
// worker.
func newClient(workers int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        workers,
			MaxIdleConnsPerHost: workers,
			MaxConnsPerHost:     workers,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// poster returns an op POSTing body to url with header, succeeding on
// want.
func poster(client *http.Client, url string, body []byte, header http.Header, want int) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			return fmt.Errorf("answer %d, want %d", res.StatusCode, want)
		}
		return nil
	}
}
