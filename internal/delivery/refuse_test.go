package delivery

import (
	"reflect"
	"testing"

	"github.com/openfaas/mailbox/internal/envelope"
)

// A refused message is a dead letter with no attempt, no route and no
// callback: either would go where the refusal forbids.
func TestRefuse(t *testing.T) {
	t.Parallel()
	e := fresh(2)
	e.DeadLetterFunction, e.CallbackURL = dlFunction, callbackURL
	before := clone(e)
	d := Refuse(e, "not in allow_functions", now)
	if !reflect.DeepEqual(e, before) {
		t.Errorf("input modified")
	}
	if d.Action != DeadLetter || d.Route != nil || d.Callback != nil {
		t.Fatalf("decision %+v, want a dead letter without route or callback", d)
	}
	n := d.Next
	if n.Reason != envelope.ReasonRefused || !n.DeadAt.Equal(now) || n.LastError != "not in allow_functions" {
		t.Errorf("reason %q, dead at %v, last error %q", n.Reason, n.DeadAt, n.LastError)
	}
	if n.Retries != e.Retries || !n.LastAttemptAt.IsZero() || n.LastStatus != 0 {
		t.Errorf("an attempt was recorded: %+v", n)
	}
}
