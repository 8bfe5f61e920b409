package envelope_test

import (
	"bytes"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

func full() *envelope.Envelope {
	at := time.Date(2026, 11, 23, 1, 2, 3, 456789, time.UTC)
	return &envelope.Envelope{
		ID:             "0123abcd",
		Function:       "fn.openfaas-fn",
		Header:         http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}},
		Body:           []byte{0, 0xff, '{', '}', 0x80},
		Retries:        3,
		Policy:         envelope.Policy{MaxRetries: new(10), Delay: new(1500 * time.Millisecond)},
		AcceptedAt:     at,
		DueAt:          at.Add(time.Minute),
		FirstAttemptAt: at.Add(time.Second),
		LastAttemptAt:  at.Add(2 * time.Second),
		LastStatus:     503,
		LastError:      "unavailable",
		LastResponse:   "try later",
		Reason:         envelope.ReasonMaxRetries,
		DeadAt:         at.Add(3 * time.Second),
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for name, e := range map[string]*envelope.Envelope{
		"full":       full(),
		"empty body": {ID: "x", Function: "f", DueAt: time.Unix(0, 1).UTC()},
	} {
		t.Run(name, func(t *testing.T) {
			data, err := envelope.Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			got, err := envelope.Decode(data)
			if err != nil {
				t.Fatal(err)
			}
			if len(e.Body) == 0 && len(got.Body) == 0 {
				got.Body = e.Body
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
			}
		})
	}
}

func TestBodyIsStoredRaw(t *testing.T) {
	t.Parallel()
	e := full()
	e.Body = bytes.Repeat([]byte{0xff}, 4096)
	data, err := envelope.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	// Raw, not base64: the body costs its own size and no more.
	if !bytes.HasSuffix(data, e.Body) {
		t.Fatal("body is not stored verbatim at the end")
	}
	e.Body = nil
	small, _ := envelope.Encode(e)
	if len(data)-len(small) != 4096 {
		t.Fatalf("a 4096-byte body added %d bytes", len(data)-len(small))
	}
}

func TestDecodeRejectsBadInput(t *testing.T) {
	t.Parallel()
	good, err := envelope.Encode(full())
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"empty":           nil,
		"unknown version": append([]byte{2}, good[1:]...),
		"truncated meta":  good[:10],
		"no length":       {envelope.Version},
		"length too long": {envelope.Version, 0x7f, '{'},
		"not JSON":        {envelope.Version, 3, 'a', 'b', 'c'},
	} {
		if _, err := envelope.Decode(data); !errors.Is(err, envelope.ErrFormat) {
			t.Errorf("%s: Decode = %v, want ErrFormat", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := envelope.Encode(full())
	f.Add(good)
	f.Add([]byte{envelope.Version, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := envelope.Decode(data)
		if err != nil {
			return
		}
		// Whatever decodes must encode and decode to the same envelope.
		again, err := envelope.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := envelope.Decode(again); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
	})
}
