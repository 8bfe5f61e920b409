package delivery

import (
	"reflect"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/status"
)

func TestStatuses(t *testing.T) {
	p := policy()
	withRoute := policy()
	withRoute.DeadLetterFunction, withRoute.CallbackURL = dlFunction, callbackURL
	base := status.Status{ID: "id-1", Function: "fn.openfaas-fn", AcceptedAt: accepted, UpdatedAt: now}
	with := func(f func(*status.Status)) status.Status { s := base; f(&s); return s }
	waitingFor := func(id, function, kind string) status.Status {
		return status.Status{ID: id, Function: function, Kind: kind, State: status.Waiting, AcceptedAt: now, UpdatedAt: now, DueAt: now, Bytes: 7}
	}
	tests := []struct {
		name string
		e    *envelope.Envelope
		d    Decision
		code int
		want []status.Status
	}{
		{"delivered", fresh(1), Decide(fresh(1), p, Result{Status: 202}, now, 0), 202,
			[]status.Status{with(func(s *status.Status) { s.State, s.Retries, s.LastStatus = status.Delivered, 1, 202 })}},
		{"retry", fresh(1), Decide(fresh(1), p, Result{Status: 503}, now, 0), 503,
			[]status.Status{with(func(s *status.Status) {
				s.State, s.Retries, s.LastStatus, s.DueAt, s.Bytes = status.Waiting, 2, 503, now.Add(30*time.Second), 7
			})}},
		{"deferred", fresh(1), Defer(fresh(1), now.Add(time.Second), time.Time{}), 0,
			[]status.Status{with(func(s *status.Status) {
				s.State, s.Retries, s.Holds, s.DueAt, s.Bytes = status.Waiting, 1, 1, now.Add(time.Second), 7
			})}},
		{"dead letter, routed and called back", fresh(3), Decide(fresh(3), withRoute, Result{Status: 500}, now, 0), 500,
			[]status.Status{
				with(func(s *status.Status) {
					s.State, s.Retries, s.LastStatus, s.Reason = status.DeadLettered, 3, 500, envelope.ReasonMaxRetries
					s.Route, s.Callback = "id-1-dl", "id-1-cb"
				}),
				waitingFor("id-1-dl", dlFunction, envelope.KindDeadLetter),
				func() status.Status {
					s := waitingFor("id-1-cb", "fn.openfaas-fn", envelope.KindCallback)
					s.Bytes = 0 // the function's answer, empty here
					return s
				}(),
			}},
	}
	for _, tc := range tests {
		got := tc.d.Statuses(tc.e, tc.code, now)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}
