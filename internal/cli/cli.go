// Package cli is the mailbox command line for dead letters:
//
//	mailbox deadletters [global flags] list|show|replay|purge [flags] [ids]
//
// lists, shows, replays and purges the dead letters of a running mailbox
// (mailbox-fn behind the gateway, or mailbox serve) through its
// management API, /deadletters. Every global flag falls back to an
// environment variable in lower_snake_case (--url: mailbox_url).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"
)

// DefaultURL is the API of mailbox serve on this machine.
const DefaultURL = "http://127.0.0.1:8090"

// UsageError is a command line that cannot run: a bad flag, value or
// argument. Other errors are failures of a command that ran.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &UsageError{msg: fmt.Sprintf(format, a...)} }

// DeadLetters runs "mailbox deadletters" with args (those after the word
// deadletters), reading settings from environ ("name=value") and the
// answer to a purge's question from stdin. It returns flag.ErrHelp after
// -h, a *UsageError for a bad command line, an *APIError for an API
// error answer.
func DeadLetters(ctx context.Context, args, environ []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := &command{
		stdin: stdin, stdout: stdout, stderr: stderr,
		env: environLookup(environ), now: time.Now,
		poll: 250 * time.Millisecond, maxPoll: 2 * time.Second,
	}
	return c.run(ctx, args)
}

// command is one run of the CLI.
type command struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	env            func(string) (string, bool)
	now            func() time.Time
	// poll is the first wait between polls of a job; it doubles up to
	// maxPoll.
	poll, maxPoll time.Duration

	globals *globals
	output  string
	client  *client
}

const usage = `usage: mailbox deadletters [global flags] <command> [flags] [ids]
       (or mailbox dl ...)

Lists, shows, replays and purges the dead letters of a running mailbox
through its management API (/deadletters).

Commands:
  list                 dead letters, newest first: --function, --reason,
                       --since, --until, -q, --limit, --cursor, --all
  show <id>            one dead letter: headers, body, earlier deaths
  replay <id>...       put dead letters back in the queue (--retries N)
  replay [filters]     replay every dead letter matching the filters (or
                       --all-dead-letters) as a job, followed until done
                       unless --wait=false
  purge <id>...        delete dead letters
  purge [filters]      delete every dead letter matching the filters (or
                       --all-dead-letters), after a question unless --yes

"mailbox deadletters <command> -h" lists a command's flags. Global flags
may also follow the command. Each falls back to the environment variable
named after it:
`

func (c *command) run(ctx context.Context, args []string) error {
	c.globals = newGlobals(c.env)
	fs := flag.NewFlagSet("mailbox deadletters", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	c.globals.register(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return parseError(err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return usagef("missing command: want list, show, replay or purge")
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	switch name {
	case "list", "ls":
		return c.list(ctx, rest)
	case "show", "get":
		return c.show(ctx, rest)
	case "replay":
		return c.replay(ctx, rest)
	case "purge", "rm":
		return c.purge(ctx, rest)
	case "help":
		fs.Usage()
		return flag.ErrHelp
	}
	fs.Usage()
	return usagef("unknown command %q: want list, show, replay or purge", name)
}

// flagSet is a command's flag set, with the global flags.
func (c *command) flagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("mailbox deadletters "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "usage: mailbox deadletters %s\n\nFlags (global flags fall back to the environment variable named after them):\n", synopsis)
		fs.PrintDefaults()
	}
	c.globals.register(fs)
	return fs
}

// parse parses args with fs, flags and arguments in any order ("--"
// ends the flags), then applies the global flags. It returns the
// arguments.
func (c *command) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, parseError(err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, c.configure()
}

// parseError passes flag.ErrHelp on; other parse errors, which the flag
// set has printed with its usage, are usage errors.
func parseError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &UsageError{msg: err.Error()}
}

// configure checks the global settings and makes the client.
func (c *command) configure() error {
	g := c.globals
	base, err := g.baseURL()
	if err != nil {
		return err
	}
	switch g.output.value {
	case outputTable, outputJSON:
		c.output = g.output.value
	default:
		return usagef("%s %q: want table or json", g.output.source(), g.output.value)
	}
	timeout, err := time.ParseDuration(g.timeout.value)
	if err != nil || timeout <= 0 {
		return usagef("%s %q: want a duration above 0 such as 30s", g.timeout.source(), g.timeout.value)
	}
	token, err := g.resolveToken()
	if err != nil {
		return err
	}
	c.client = &client{base: base, token: token, http: newHTTPClient(timeout)}
	return nil
}

// setting is a global flag and where its value came from.
type setting struct {
	flag, env string
	value     string
	// from is the flag as given ("--url"), the environment variable, or
	// empty for the default.
	from string
}

// String is empty: flag shows it as the default in the usage, which
// names the real default itself and must not show a token.
func (s *setting) String() string { return "" }

func (s *setting) Set(v string) error {
	s.value, s.from = v, "--"+s.flag
	return nil
}

// source names where the value came from, for an error.
func (s *setting) source() string {
	if s.from == "" {
		return "--" + s.flag
	}
	return s.from
}

func (s *setting) fromFlag() bool { return strings.HasPrefix(s.from, "-") }

// globals are the flags every command takes.
type globals struct {
	url, token, tokenFile, output, timeout setting
}

func newGlobals(env func(string) (string, bool)) *globals {
	g := &globals{
		url:       setting{flag: "url", env: "mailbox_url", value: DefaultURL},
		token:     setting{flag: "token", env: "mailbox_token"},
		tokenFile: setting{flag: "token-file", env: "mailbox_token_file"},
		output:    setting{flag: "output", env: "mailbox_output", value: outputTable},
		timeout:   setting{flag: "timeout", env: "mailbox_timeout", value: "30s"},
	}
	for _, s := range g.all() {
		if v, ok := env(s.env); ok {
			s.value, s.from = v, s.env
		}
	}
	return g
}

func (g *globals) all() []*setting {
	return []*setting{&g.url, &g.token, &g.tokenFile, &g.output, &g.timeout}
}

// register adds the global flags to fs. The values parsed so far stay.
func (g *globals) register(fs *flag.FlagSet) {
	fs.Var(&g.url, "url", "the mailbox `URL`: http://gateway:8080/function/mailbox for mailbox-fn (env mailbox_url) (default "+DefaultURL+")")
	fs.Var(&g.token, "token", "bearer `token` of the management API (env mailbox_token)")
	fs.Var(&g.tokenFile, "token-file", "`file` holding the token, such as an OpenFaaS secret (env mailbox_token_file)")
	fs.Var(&g.output, "output", "output `format`: table or json (env mailbox_output) (default table)")
	fs.Var(&outputShort{&g.output}, "o", "output `format`, as --output")
	fs.Var(&g.timeout, "timeout", "`duration` bounding each request (env mailbox_timeout) (default 30s)")
}

// outputShort is -o, which sets --output.
type outputShort struct{ s *setting }

func (o *outputShort) String() string { return "" }

func (o *outputShort) Set(v string) error {
	o.s.value, o.s.from = v, "-o"
	return nil
}

func (g *globals) baseURL() (string, error) {
	s := &g.url
	u, err := url.Parse(s.value)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", usagef("%s %q: want an http or https URL such as %s or http://gateway:8080/function/mailbox", s.source(), s.value, DefaultURL)
	}
	return strings.TrimRight(s.value, "/"), nil
}

// resolveToken reads the token: a flag before the environment, and
// --token or --token-file but not both.
func (g *globals) resolveToken() (string, error) {
	tok, file := &g.token, &g.tokenFile
	var from *setting
	switch {
	case tok.fromFlag() && file.fromFlag():
		return "", usagef("give --token or --token-file, not both")
	case tok.fromFlag():
		from = tok
	case file.fromFlag():
		from = file
	case tok.value != "" && file.value != "":
		return "", usagef("mailbox_token and mailbox_token_file are both set: unset one")
	case tok.value != "":
		from = tok
	case file.value != "":
		from = file
	default:
		return "", nil
	}
	token := from.value
	if from == file {
		b, err := os.ReadFile(file.value)
		if err != nil {
			return "", fmt.Errorf("%s: %w", file.source(), err)
		}
		token = string(b)
		if strings.TrimSpace(token) == "" {
			return "", fmt.Errorf("%s: token file %s is empty", file.source(), file.value)
		}
	}
	token = strings.TrimSpace(token)
	if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", usagef("the token of %s has spaces or control characters inside", from.source())
	}
	return token, nil
}

// environLookup looks names up in environ ("name=value").
func environLookup(environ []string) func(string) (string, bool) {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	return func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
}
