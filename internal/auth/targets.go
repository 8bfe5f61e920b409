package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/openfaas/mailbox/internal/names"
)

// ErrRefused is wrapped by every error of Targets.Check that refuses a
// valid function name.
var ErrRefused = errors.New("refused")

// Targets are the functions the mailbox may send messages to (requeue and
// replay): the allow_functions and allow_namespaces settings, less the
// mailbox itself (mailbox_function). A name without a namespace is in
// names.DefaultNamespace, as the gateway treats it.
type Targets struct {
	functions  map[string]bool // qualified; empty: every function
	namespaces map[string]bool // empty: every namespace
	self       string          // qualified
}

// NewTargets returns the Targets of the settings: allowFunctions ("name" or
// "name.namespace") and allowNamespaces, each empty to allow all, and
// mailboxFunction, required.
func NewTargets(allowFunctions, allowNamespaces []string, mailboxFunction string) (*Targets, error) {
	if !names.Valid(mailboxFunction) {
		return nil, fmt.Errorf("auth: mailbox_function %q is not <function> or <function>.<namespace>", mailboxFunction)
	}
	t := &Targets{
		functions:  make(map[string]bool, len(allowFunctions)),
		namespaces: make(map[string]bool, len(allowNamespaces)),
		self:       names.Qualify(mailboxFunction, names.DefaultNamespace),
	}
	for _, fn := range allowFunctions {
		if !names.Valid(fn) {
			return nil, fmt.Errorf("auth: allow_functions: %q is not <function> or <function>.<namespace>", fn)
		}
		t.functions[names.Qualify(fn, names.DefaultNamespace)] = true
	}
	for _, ns := range allowNamespaces {
		if !names.ValidLabel(ns) {
			return nil, fmt.Errorf("auth: allow_namespaces: %q is not a namespace", ns)
		}
		t.namespaces[ns] = true
	}
	return t, nil
}

// Check returns nil when the mailbox may send messages to function ("name"
// or "name.namespace"). Otherwise the error says why: the name is not a
// function name, or (wrapping ErrRefused) the function is the mailbox
// itself, is not in allow_functions, or its namespace is not in
// allow_namespaces, checked in that order.
func (t *Targets) Check(function string) error {
	if !names.Valid(function) {
		return fmt.Errorf("%q is not <function> or <function>.<namespace> (DNS-1123 labels)", function)
	}
	q := names.Qualify(function, names.DefaultNamespace)
	_, ns, _ := strings.Cut(q, ".")
	switch {
	case q == t.self:
		return fmt.Errorf("%w: %q is the mailbox itself (mailbox_function): a message to it would loop", ErrRefused, function)
	case len(t.functions) > 0 && !t.functions[q]:
		return fmt.Errorf("%w: %q is not in allow_functions", ErrRefused, function)
	case len(t.namespaces) > 0 && !t.namespaces[ns]:
		return fmt.Errorf("%w: %q is in namespace %s, which is not in allow_namespaces", ErrRefused, function, ns)
	}
	return nil
}

// ErrLoop is wrapped by CheckMessage's error for a message whose dead
// letters would go back to its own function.
var ErrLoop = errors.New("loop")

// TargetError is CheckMessage's refusal: Field is the header it is about,
// "function" for the message's own function.
type TargetError struct {
	Field string
	err   error
}

func (e *TargetError) Error() string { return e.err.Error() }
func (e *TargetError) Unwrap() error { return e.err }

// CheckMessage returns nil when the mailbox may deliver a message for
// function whose dead letters go to deadLetterFunction (empty: none), on
// a requeue and on a replay alike: both must pass Check, and they must
// differ, or its dead letters would come back to it (ErrLoop). A nil t
// allows every function, but not a loop.
func (t *Targets) CheckMessage(function, deadLetterFunction string) error {
	if t != nil {
		if err := t.Check(function); err != nil {
			return &TargetError{Field: "function", err: err}
		}
	}
	if deadLetterFunction == "" {
		return nil
	}
	const field = "X-Dead-Letter-Function"
	if names.Qualify(deadLetterFunction, names.DefaultNamespace) == names.Qualify(function, names.DefaultNamespace) {
		return &TargetError{Field: field, err: fmt.Errorf("%w: %s is the message's own function: its dead letters would come back to it", ErrLoop, deadLetterFunction)}
	}
	if t != nil {
		if err := t.Check(deadLetterFunction); err != nil {
			return &TargetError{Field: field, err: err}
		}
	}
	return nil
}
