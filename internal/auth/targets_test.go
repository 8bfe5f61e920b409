package auth_test

import (
	"errors"
	"testing"

	"github.com/openfaas/mailbox/internal/auth"
)

func TestTargets(t *testing.T) {
	t.Parallel()

	type check struct {
		function string
		want     string // the whole error; "" for allowed
	}
	for _, tc := range []struct {
		name       string
		functions  []string
		namespaces []string
		self       string
		checks     []check
	}{
		{name: "no lists: all but the mailbox", self: "mailbox", checks: []check{
			{"fn", ""},
			{"fn.dev", ""},
			{"mailbox", `refused: "mailbox" is the mailbox itself (mailbox_function): a message to it would loop`},
			{"mailbox.openfaas-fn", `refused: "mailbox.openfaas-fn" is the mailbox itself (mailbox_function): a message to it would loop`},
			{"mailbox.dev", ""},
			{"Fn", `"Fn" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
			{"", `"" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
			{"a.b.c", `"a.b.c" is not <function> or <function>.<namespace> (DNS-1123 labels)`},
		}},
		{name: "mailbox in another namespace", self: "mailbox.openfaas", checks: []check{
			{"mailbox", ""},
			{"mailbox.openfaas", `refused: "mailbox.openfaas" is the mailbox itself (mailbox_function): a message to it would loop`},
		}},
		{name: "allow_functions", functions: []string{"fn", "other.dev"}, self: "mailbox", checks: []check{
			{"fn", ""},
			{"fn.openfaas-fn", ""},
			{"other.dev", ""},
			{"other", `refused: "other" is not in allow_functions`},
			{"fn.dev", `refused: "fn.dev" is not in allow_functions`},
			{"mailbox", `refused: "mailbox" is the mailbox itself (mailbox_function): a message to it would loop`},
		}},
		{name: "allow_namespaces", namespaces: []string{"dev"}, self: "mailbox", checks: []check{
			{"fn.dev", ""},
			{"fn", `refused: "fn" is in namespace openfaas-fn, which is not in allow_namespaces`},
			{"fn.prod", `refused: "fn.prod" is in namespace prod, which is not in allow_namespaces`},
		}},
		{name: "both lists", functions: []string{"fn.dev", "x.prod"}, namespaces: []string{"dev"}, self: "mailbox", checks: []check{
			{"fn.dev", ""},
			{"other.dev", `refused: "other.dev" is not in allow_functions`},
			{"x.prod", `refused: "x.prod" is in namespace prod, which is not in allow_namespaces`},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			targets, err := auth.NewTargets(tc.functions, tc.namespaces, tc.self)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.checks {
				err := targets.Check(c.function)
				got := ""
				if err != nil {
					got = err.Error()
				}
				if got != c.want {
					t.Errorf("Check(%q) = %q, want %q", c.function, got, c.want)
				}
				// Only a valid name that is refused wraps ErrRefused.
				refused := c.want != "" && c.want[0] == 'r'
				if errors.Is(err, auth.ErrRefused) != refused {
					t.Errorf("Check(%q): errors.Is(ErrRefused) = %v, want %v", c.function, !refused, refused)
				}
			}
		})
	}
}

func TestNewTargetsErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		functions  []string
		namespaces []string
		self       string
		want       string
	}{
		{"no mailbox_function", nil, nil, "", `auth: mailbox_function "" is not <function> or <function>.<namespace>`},
		{"bad function", []string{"fn", "Fn"}, nil, "mailbox", `auth: allow_functions: "Fn" is not <function> or <function>.<namespace>`},
		{"bad namespace", nil, []string{"a.b"}, "mailbox", `auth: allow_namespaces: "a.b" is not a namespace`},
	} {
		_, err := auth.NewTargets(tc.functions, tc.namespaces, tc.self)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: NewTargets error = %v, want %s", tc.name, err, tc.want)
		}
	}
}

func TestCheckMessage(t *testing.T) {
	t.Parallel()
	targets, err := auth.NewTargets([]string{"fn", "dlq"}, nil, "mailbox")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name          string
		targets       *auth.Targets
		function, dlf string
		field         string // "" when allowed
		loop          bool
	}{
		{"allowed", targets, "fn", "dlq", "", false},
		{"no dead-letter function", targets, "fn", "", "", false},
		{"function not allowed", targets, "other", "dlq", "function", false},
		{"the mailbox", targets, "mailbox", "", "function", false},
		{"its own dead-letter function", targets, "fn", "fn.openfaas-fn", "X-Dead-Letter-Function", true},
		{"dead letters to the mailbox", targets, "fn", "mailbox", "X-Dead-Letter-Function", false},
		{"dead letters not allowed", targets, "fn", "other", "X-Dead-Letter-Function", false},
		{"no targets: anything", nil, "other", "mailbox", "", false},
		{"no targets: still no loop", nil, "fn.team", "fn.team", "X-Dead-Letter-Function", true},
	} {
		err := c.targets.CheckMessage(c.function, c.dlf)
		te, ok := errors.AsType[*auth.TargetError](err)
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: %v, want nil", c.name, err)
		case c.field != "" && (!ok || te.Field != c.field):
			t.Errorf("%s: %v, want a TargetError about %s", c.name, err, c.field)
		case c.field != "" && errors.Is(err, auth.ErrLoop) != c.loop:
			t.Errorf("%s: %v: ErrLoop %v, want %v", c.name, err, errors.Is(err, auth.ErrLoop), c.loop)
		case c.field != "" && !c.loop && !errors.Is(err, auth.ErrRefused):
			t.Errorf("%s: %v does not wrap ErrRefused", c.name, err)
		}
	}
}
