package service_test

// The web page, driven in a real browser: headless Chromium (Debian's
// chromium package, which .ci/run installs) through chromedp.

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/openfaas/mailbox/internal/poll"
)

// browserRequired makes a missing browser fail the test instead of
// skipping it; .ci/run sets it.
const browserRequired = "MAILBOX_BROWSER_REQUIRED"

// screenshotTo, when set, is where the test saves a screenshot of the
// page for the README.
const screenshotTo = "MAILBOX_SCREENSHOT"

// browser starts headless Chromium for the test and returns its context.
// answer decides each confirmation dialog the page opens.
func browser(t *testing.T, answer func(message string) bool) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv(browserRequired) != "" {
			t.Fatalf("no Chromium found and %s is set: apt-get install chromium", browserRequired)
		}
		t.Skip("no Chromium found: apt-get install chromium to run the browser test")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox cannot start
		chromedp.WindowSize(1280, 900),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	chromedp.ListenTarget(ctx, func(ev any) {
		if d, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			accept := answer(d.Message)
			go func() { _ = chromedp.Run(ctx, page.HandleJavaScriptDialog(accept)) }()
		}
	})
	return ctx
}

func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action) {
	t.Helper()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestWebPageReplaysADeadLetter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.bury(t, "zeta", "ui-replay", `{"order": 1}`)
		b.bury(t, "zeta", "ui-keep", "keep me")
		b.bury(t, "eta", "ui-other", "other")
		// Messages waiting for an hour, counted by function on the page.
		for range 3 {
			b.mustSchedule(t, "theta", []byte("later"), "X-Delay-Duration", "1h")
		}
		rec := b.deploy("zeta", nil, nil)
		b.startConnector(t)

		// Confirmations: "keep" is never purged.
		var asked []string
		ctx := browser(t, func(message string) bool {
			asked = append(asked, message)
			return !strings.Contains(message, "ui-keep")
		})

		var text string
		run(t, ctx, "sign in",
			chromedp.Navigate(b.api.URL+"/ui"),
			chromedp.WaitVisible("#token", chromedp.ByID),
			chromedp.SendKeys("#token", apiToken, chromedp.ByID),
			chromedp.Click("#sign-in", chromedp.ByID),
			chromedp.WaitVisible("#deadletters", chromedp.ByID),
			chromedp.Text("body", &text, chromedp.ByQuery),
		)
		for _, want := range []string{"ui-replay", "ui-keep", "ui-other", "3 matching"} {
			if !strings.Contains(text, want) {
				t.Fatalf("the list does not show %q:\n%s", want, text)
			}
		}
		poll.Until(t, 20*time.Second, "waiting count shown", func() bool {
			run(t, ctx, "reload", chromedp.Reload(), chromedp.WaitVisible("#counts", chromedp.ByID), chromedp.Text("body", &text, chromedp.ByQuery))
			return strings.Contains(text, "theta")
		})
		run(t, ctx, "search",
			chromedp.SetValue("#q", "keep", chromedp.ByID),
			chromedp.Click("#search", chromedp.ByID),
		)
		// The list before the search has a #deadletters too, and may go
		// while it is read: read again until the searched page is shown.
		var location string
		poll.Until(t, 20*time.Second, "the search's results shown", func() bool {
			attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err := chromedp.Run(attempt,
				chromedp.Location(&location),
				chromedp.Text("#deadletters", &text, chromedp.ByID),
			)
			return err == nil && strings.Contains(location, "q=keep")
		})
		if !strings.Contains(text, "ui-keep") || strings.Contains(text, "ui-replay") {
			t.Fatalf("searching for keep lists:\n%s", text)
		}

		// A purge turned down at the confirmation purges nothing.
		run(t, ctx, "purge declined",
			chromedp.Navigate(b.api.URL+"/ui/deadletters/ui-keep"),
			chromedp.WaitVisible("#purge", chromedp.ByID),
			chromedp.Click("#purge", chromedp.ByID),
		)
		poll.Until(t, 10*time.Second, "the purge confirmation asked", func() bool { return len(asked) == 1 })
		if l := b.list(t, "?q=ui-keep"); l.Total != 1 {
			t.Fatalf("ui-keep purged although the confirmation was declined")
		}

		run(t, ctx, "details and replay",
			chromedp.Navigate(b.api.URL+"/ui/deadletters/ui-replay"),
			chromedp.WaitVisible("#body", chromedp.ByID),
			chromedp.Text("#body", &text, chromedp.ByID),
		)
		if text != `{"order": 1}` {
			t.Fatalf("body shown as %q", text)
		}
		run(t, ctx, "replay",
			chromedp.Click("#replay", chromedp.ByID),
			chromedp.WaitVisible("#notice", chromedp.ByID),
			chromedp.Text("#notice", &text, chromedp.ByID),
		)
		if !strings.Contains(text, "Replayed ui-replay") {
			t.Fatalf("notice after replay: %q", text)
		}
		poll.Until(t, 20*time.Second, "the replayed message delivered", func() bool { return len(callsWith(rec, "ui-replay")) == 1 })
		if got := string(callsWith(rec, "ui-replay")[0].Body); got != `{"order": 1}` {
			t.Fatalf("delivered body %q", got)
		}
		if len(asked) != 2 || !strings.Contains(asked[1], "Replay ui-replay to zeta") {
			t.Fatalf("confirmations asked: %q", asked)
		}
		if path := os.Getenv(screenshotTo); path != "" && b.cfg.Backend == "jetstream" {
			var png []byte
			run(t, ctx, "screenshot",
				chromedp.Navigate(b.api.URL+"/ui"),
				chromedp.WaitVisible("#deadletters", chromedp.ByID),
				chromedp.FullScreenshot(&png, 100), // quality 100 makes a PNG
			)
			if err := os.WriteFile(path, png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestWebPageNeedsTheToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		ctx := browser(t, func(string) bool { return true })
		var text, url string
		run(t, ctx, "wrong token",
			chromedp.Navigate(b.api.URL+"/ui/deadletters/x"),
			chromedp.WaitVisible("#token", chromedp.ByID),
			chromedp.SendKeys("#token", "not-the-token", chromedp.ByID),
			chromedp.Click("#sign-in", chromedp.ByID),
			chromedp.WaitVisible("#error", chromedp.ByID),
			chromedp.Text("#error", &text, chromedp.ByID),
			chromedp.Location(&url),
		)
		if !strings.Contains(text, "not the mailbox's token") || !strings.HasSuffix(url, "/ui/login") {
			t.Fatalf("after a wrong token: %q at %s", text, url)
		}
	})
}
