package catalog

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"

	"github.com/openfaas/faas-provider/sdk"
	"github.com/openfaas/faas-provider/types"
)

// ErrCredentials reports that the gateway refused the catalog's
// credentials (401 or 403), or asked for some when basic_auth is off.
var ErrCredentials = errors.New("catalog: the gateway refused the credentials")

// found is one function of a list read, with its ignored annotations.
type found struct {
	key      string // name.namespace
	fn       Function
	problems []problem
}

// load reads the gateway's function list: the namespaces, then the
// functions of each. With no namespaces (a provider without them) it reads
// the functions the gateway lists without one, as connector-sdk does.
func (c *Catalog) load() ([]found, error) {
	// faas-provider v0.19.1's sdk does not check the status of
	// /system/functions, and of /system/namespaces only for 401; the
	// recorder lets load check it. A new SDK for every call, on a copy of
	// the URL, because the sdk writes the path and query into its
	// GatewayURL and never clears the query. The client's Timeout bounds
	// every call, since the sdk takes no context.
	rec := &statusRecorder{base: c.transport}
	client := *c.client
	client.Transport = rec
	call := func(what string, f func(*sdk.SDK) error) error {
		rec.reset()
		u := *c.gatewayURL
		err := f(&sdk.SDK{GatewayURL: &u, Client: &client, Credentials: c.creds})
		if code := rec.last(); code != 0 && (code < 200 || code > 299) {
			return c.statusError(what, code)
		}
		if err != nil {
			return fmt.Errorf("catalog: GET %s: %w", what, err)
		}
		return nil
	}

	var namespaces []string
	err := call("/system/namespaces", func(s *sdk.SDK) (err error) {
		namespaces, err = s.GetNamespaces()
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(namespaces) == 0 {
		namespaces = []string{""}
	}
	var out []found
	for _, ns := range namespaces {
		what := "/system/functions"
		if ns != "" {
			what += "?namespace=" + url.QueryEscape(ns)
		}
		var list []types.FunctionStatus
		err := call(what, func(s *sdk.SDK) (err error) {
			list, err = s.GetFunctions(ns)
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, st := range list {
			namespace := ns
			if namespace == "" {
				namespace = st.Namespace
			}
			if namespace == "" {
				namespace = c.defaultNamespace
			}
			var annotations map[string]string
			if st.Annotations != nil {
				annotations = *st.Annotations
			}
			policy, limits, problems := parseAnnotations(annotations)
			out = append(out, found{
				key:      st.Name + "." + namespace,
				fn:       Function{Name: st.Name, Namespace: namespace, Policy: policy, Limits: limits},
				problems: problems,
			})
		}
	}
	return out, nil
}

// statusError describes an answer other than 2xx to GET what.
func (c *Catalog) statusError(what string, code int) error {
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	switch {
	case (code == http.StatusUnauthorized || code == http.StatusForbidden) && c.creds == nil:
		return fmt.Errorf("%w: GET %s answered %s and basic_auth is off: the gateway wants credentials", ErrCredentials, what, status)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return fmt.Errorf("%w: GET %s answered %s: check the basic-auth user and password in secret_mount_path", ErrCredentials, what, status)
	default:
		return fmt.Errorf("catalog: GET %s answered %s", what, status)
	}
}

// statusRecorder remembers the status code of the last answer.
type statusRecorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	code int
}

func (r *statusRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := r.base.RoundTrip(req)
	if err == nil {
		r.mu.Lock()
		r.code = res.StatusCode
		r.mu.Unlock()
	}
	return res, err
}

func (r *statusRecorder) reset() {
	r.mu.Lock()
	r.code = 0
	r.mu.Unlock()
}

func (r *statusRecorder) last() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.code
}
