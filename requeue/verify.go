package requeue

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/signature"
)

// The headers of the mailbox's signatures.
const (
	// HeaderSignature signs a request to the mailbox (Request, SignRequest).
	HeaderSignature = signature.HeaderRequest
	// HeaderDeliverySignature signs a call from the mailbox (Verify).
	HeaderDeliverySignature = signature.HeaderDelivery
	// HeaderTimestamp is when either was signed, in unix seconds.
	HeaderTimestamp = signature.HeaderTimestamp
	// HeaderFunction names the function a signed delivery is for.
	HeaderFunction = signature.HeaderFunction
)

// DefaultWindow is how far a signature's timestamp may be from now.
const DefaultWindow = signature.DefaultWindow

// ErrNotSigned is wrapped by Verify's error when the request carries no
// delivery signature at all: not a call from a mailbox with a token.
var ErrNotSigned = errors.New("requeue: the request carries no X-Mailbox-Delivery-Signature")

// ErrBadSignature is wrapped by Verify's error when the request carries a
// delivery signature that is not the mailbox's for this request: another
// token, a changed header or body, or a timestamp outside the window.
var ErrBadSignature = errors.New("requeue: the delivery signature is not valid")

// Delivery is a call the mailbox signed, as Verify found it. Its values
// come from headers the signature covers.
type Delivery struct {
	// ID is the message id (X-Mailbox-Message-Id).
	ID string
	// Function is the function the mailbox called (X-Mailbox-Function):
	// compare it with your own name to refuse a delivery made for
	// another function that shares the token. Request with WithToken
	// carries a delivery's control headers over only to that function
	// (or, for a routed dead letter, back to its X-Dead-Letter-From).
	Function string
	// Retries is X-Retries, the attempts made before this one; 0 when
	// absent (a callback).
	Retries int
	// Time is when the mailbox signed the call.
	Time time.Time

	header http.Header // the signed control headers, for Header
}

// Verify checks that r is a delivery the mailbox made and signed with
// token: a call to a function or a dead letter routed to one, not a
// callback (VerifyCallback). Its X-Mailbox-Delivery-Signature covers the
// message id, retries, function, the mailbox's other control headers,
// X-Mailbox-Timestamp (within DefaultWindow of now) and body, which is r's
// body as the caller read it. A mailbox signs every call it makes (to
// functions, dead-letter functions and callback URLs) when
// auth_token_secret is set; pass the same token, e.g. read from the
// function's mailbox-token secret.
//
// It returns the Delivery, or an error wrapping ErrNotSigned or
// ErrBadSignature. Pass the Delivery to Header or Request with
// FromDelivery to carry its control headers over; without it they are
// dropped, since any caller of a public function can set them.
func Verify(r *http.Request, body []byte, token string) (*Delivery, error) {
	return verifyAt(r, body, token, time.Now(), DefaultWindow, signature.Delivery)
}

// Callback is a message's outcome the mailbox POSTed to its callback URL
// and signed, as VerifyCallback found it. Its values come from headers
// the signature covers.
type Callback struct {
	// ID is the message's id (X-Mailbox-Message-Id).
	ID string
	// Function is the function whose outcome it reports
	// (X-Mailbox-Function, X-Function-Name).
	Function string
	// Outcome is "delivered" or "dead-lettered" (X-Mailbox-Outcome).
	Outcome string
	// Status is the function's last HTTP status (X-Function-Status), 0
	// when it never answered.
	Status int
	// Attempts is the calls made (X-Mailbox-Attempts).
	Attempts int
	// Reason is a dead letter's reason (X-Dead-Letter-Reason).
	Reason string
	// Time is when the mailbox signed the call.
	Time time.Time
}

// VerifyCallback checks that r is a callback the mailbox made and signed
// with token, as Verify does for deliveries; a delivery does not verify
// as a callback, nor a callback as a delivery. A callback is no delivery
// to the function it reports on: it carries no control headers to
// requeue with.
func VerifyCallback(r *http.Request, body []byte, token string) (*Callback, error) {
	d, err := verifyAt(r, body, token, time.Now(), DefaultWindow, signature.Callback)
	if err != nil {
		return nil, err
	}
	c := &Callback{ID: d.ID, Function: d.Function, Outcome: d.header.Get("X-Mailbox-Outcome"),
		Reason: d.header.Get("X-Dead-Letter-Reason"), Time: d.Time}
	for _, f := range []struct {
		name string
		n    *int
	}{{"X-Function-Status", &c.Status}, {"X-Mailbox-Attempts", &c.Attempts}} {
		if v := d.header.Get(f.name); v != "" {
			if *f.n, err = strconv.Atoi(v); err != nil || !isDigits(v) {
				return nil, fmt.Errorf("%w: %s %q is not a non-negative integer", ErrBadSignature, f.name, v)
			}
		}
	}
	return c, nil
}

func verifyAt(r *http.Request, body []byte, token string, now time.Time, window time.Duration,
	canon func(string, http.Header, []byte) (string, error)) (*Delivery, error) {
	if r == nil {
		return nil, ErrNotSigned
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("requeue: Verify: the token is empty")
	}
	sig := r.Header.Get(signature.HeaderDelivery)
	if sig == "" {
		return nil, ErrNotSigned
	}
	ts := r.Header.Get(signature.HeaderTimestamp)
	if err := signature.CheckTime(ts, now, window); err != nil {
		return nil, fmt.Errorf("%w: X-Mailbox-Timestamp is %s", ErrBadSignature, err)
	}
	canonical, err := canon(ts, r.Header, body)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	if !signature.Equal(signature.Key([]byte(token), signature.PurposeDelivery), canonical, sig) {
		return nil, ErrBadSignature
	}
	// Repeated headers are signed as they are; one value of each is what
	// the mailbox sends, so anything else is refused rather than guessed.
	d := &Delivery{header: http.Header{}}
	for _, name := range signature.DeliveryHeaders {
		vs := r.Header.Values(name)
		if len(vs) > 1 {
			return nil, fmt.Errorf("%w: %s given more than once", ErrBadSignature, name)
		}
		if len(vs) == 1 {
			d.header.Set(name, strings.Trim(vs[0], " \t"))
		}
	}
	n, _ := strconv.ParseInt(ts, 10, 64)
	d.Time = time.Unix(n, 0)
	d.ID = d.header.Get(HeaderMessageID)
	d.Function = d.header.Get(signature.HeaderFunction)
	if v := d.header.Get(HeaderRetries); v != "" {
		if d.Retries, err = strconv.Atoi(v); err != nil || d.Retries < 0 || !isDigits(v) {
			return nil, fmt.Errorf("%w: X-Retries %q is not a non-negative integer", ErrBadSignature, v)
		}
	}
	return d, nil
}

// SignRequest signs req, a request to the mailbox's requeue API carrying
// body, with token: it sets X-Mailbox-Timestamp (now) and
// X-Mailbox-Signature, which covers the method, the path the mailbox
// receives (/deadletter/<function>, whatever prefix the gateway adds in
// front), every control header, Content-Type and the body: set them
// before signing. The signature is valid for
// that one request, for 5 minutes (the mailbox's signature_window);
// Request signs this way when given WithToken.
func SignRequest(req *http.Request, body []byte, token string) error {
	token = strings.TrimSpace(token)
	if token == "" {
		return errors.New("requeue: SignRequest: the token is empty")
	}
	p := req.URL.EscapedPath()
	i := strings.LastIndex(p, "/deadletter/")
	if i < 0 {
		return fmt.Errorf("requeue: SignRequest: %s is not a requeue: the path must end in /deadletter/<function>", p)
	}
	ts := signature.Timestamp(time.Now())
	canonical, err := signature.Request(req.Method, p[i:], ts, req.Header, body)
	if err != nil {
		return fmt.Errorf("requeue: SignRequest: %w", err)
	}
	req.Header.Set(signature.HeaderTimestamp, ts)
	req.Header.Set(signature.HeaderRequest, signature.Sign(signature.Key([]byte(token), signature.PurposeRequest), canonical))
	return nil
}
