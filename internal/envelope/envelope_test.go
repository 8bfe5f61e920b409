package envelope_test

import (
	"bytes"
	"encoding/binary"
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

// FuzzEnvelopeDecode feeds Decode what a broker might hold: envelopes,
// truncated or altered ones, and bytes that are none. Decode never
// panics, and what it decodes survives another round trip unchanged:
// decode(encode(e)) == e, and encoding it again gives the same bytes.
func FuzzEnvelopeDecode(f *testing.F) {
	for _, e := range []*envelope.Envelope{
		full(),
		{ID: "x", Function: "f"},
		{ID: "ünï-cödé", Function: "fn", Header: http.Header{"X-Emoji": {"✓ 🙂"}}, Body: []byte("\x00\xff")},
		{ID: "big", Function: "fn", Retries: 1<<31 - 1, Policy: envelope.Policy{
			MaxRetries: new(1<<31 - 1), Delay: new(time.Duration(1<<63 - 1)), TTL: new(time.Duration(1)),
			CallbackURL: "http://gateway:8080/function/cb?token=%25s3cret", DeadLetterFunction: "dlq.openfaas-fn",
		}},
		{ID: "dead", Function: "fn", Kind: envelope.KindDeadLetter, Reason: envelope.ReasonMalformed, Replays: 3,
			Deaths: []envelope.Death{{Reason: envelope.ReasonExpired, Retries: 2}}},
		{ID: "zone", Function: "fn", AcceptedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("", -3*3600-30*60))},
	} {
		data, err := envelope.Encode(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	// Bytes that are no envelope, or a hand-made one.
	for _, raw := range []string{"", "\x01", "\x02{}", "\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01{}"} {
		f.Add([]byte(raw))
	}
	for _, meta := range []string{
		`{}`,
		`{"retries":1e400}`,
		`{"retries":-1,"holds":99999999999999999999}`,
		`{"header":{}}`,
		`{"header":{"a":null,"b":[],"C":["\u0000"]}}`,
		"{\"id\":\"\xd7\",\"function\":\"\\ud800\"}",
		`{"due_at":"10000-01-01T00:00:00Z"}`,
		`{"accepted_at":"2026-01-01T00:00:00+23:59"}`,
		`{"delay":-1,"ttl":0,"max_delay":9223372036854775807}`,
		`{"deaths":[],"replays":1}`,
		`{"id":"a","id":"b"}`,
		`[]`,
		`null`,
	} {
		data := binary.AppendUvarint([]byte{envelope.Version}, uint64(len(meta)))
		f.Add(append(append(data, meta...), "body"...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := envelope.Decode(data)
		if err != nil {
			if !errors.Is(err, envelope.ErrFormat) {
				t.Fatalf("Decode error %v is not ErrFormat", err)
			}
			return
		}
		// Nothing the connector computes with may be negative (a shift by
		// a negative count panics), nor a kind it does not know.
		if e.Retries < 0 || e.Holds < 0 || e.Replays < 0 || (e.MaxRetries != nil && *e.MaxRetries < 0) ||
			(e.Delay != nil && *e.Delay < 0) || (e.Kind != envelope.KindMessage && e.Kind != envelope.KindDeadLetter && e.Kind != envelope.KindCallback) {
			t.Fatalf("Decode accepted an impossible envelope: %+v", e)
		}
		encoded, err := envelope.Encode(e)
		if err != nil {
			t.Fatalf("what decodes does not encode: %v", err)
		}
		back, err := envelope.Decode(encoded)
		if err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
		if !reflect.DeepEqual(roundTripForm(back), roundTripForm(e)) {
			t.Fatalf("round trip changed the envelope:\n got %+v\nwant %+v", back, e)
		}
		if again, _ := envelope.Encode(back); !bytes.Equal(again, encoded) {
			t.Fatalf("encoding is not stable:\n%q\n%q", again, encoded)
		}
	})
}

// roundTripForm is e as a round trip may give it back with the same meaning:
// an empty map, slice or body is left out by Encode and reads back as nil.
func roundTripForm(e *envelope.Envelope) *envelope.Envelope {
	c := *e
	if len(c.Header) == 0 {
		c.Header = nil
	}
	if len(c.Body) == 0 {
		c.Body = nil
	}
	if len(c.Deaths) == 0 {
		c.Deaths = nil
	}
	return &c
}

// TestDecodeRejectsImpossibleValues: whatever is on NATS may be forged. An
// envelope whose fields no mailbox writes (a negative count, an unknown
// kind) is ErrFormat, so the consumer keeps it as a malformed dead letter
// instead of acting on it; a negative holds once panicked the connector.
func TestDecodeRejectsImpossibleValues(t *testing.T) {
	t.Parallel()
	for _, meta := range []string{
		`{"id":"x","function":"f","kind":"callback","callback_url":"http://gw/function/f","holds":-1}`,
		`{"id":"x","function":"f","retries":-1}`,
		`{"id":"x","function":"f","replays":-2}`,
		`{"id":"x","function":"f","max_retries":-1}`,
		`{"id":"x","function":"f","delay":-1}`,
		`{"id":"x","function":"f","max_delay":-1000}`,
		`{"id":"x","function":"f","ttl":-5}`,
		`{"id":"x","function":"f","last_status":-200}`,
		`{"id":"x","function":"f","kind":"surprise"}`,
		`{"id":"x","function":"f","backoff":"sideways"}`,
		`{"id":"x","function":"f","reason":"because"}`,
		`{"id":"x","function":"f","deaths":[{"reason":"expired","retries":-1}]}`,
	} {
		data := binary.AppendUvarint([]byte{envelope.Version}, uint64(len(meta)))
		data = append(append(data, meta...), "body"...)
		if e, err := envelope.Decode(data); !errors.Is(err, envelope.ErrFormat) {
			t.Errorf("Decode(%s) = %+v, %v; want ErrFormat", meta, e, err)
		}
	}
	// What the mailbox writes still decodes, malformed dead letters too.
	for _, e := range []*envelope.Envelope{
		full(),
		{ID: "malformed-00", Reason: envelope.ReasonMalformed, Body: []byte("junk")},
		{ID: "x-cb", Kind: envelope.KindCallback, Function: "f", Policy: envelope.Policy{CallbackURL: "http://gw/function/g"}, Holds: 3},
		{ID: "x-dl", Kind: envelope.KindDeadLetter, Function: "f", Replays: 1, Deaths: []envelope.Death{{Reason: envelope.ReasonRejected, LastStatus: 400}}},
	} {
		data, err := envelope.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := envelope.Decode(data); err != nil {
			t.Errorf("Decode(Encode(%+v)) = %v", e, err)
		}
	}
}
