package chart

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

var (
	repoRoot = filepath.Join("..", "..")
	chartDir = filepath.Join(repoRoot, "chart", "mailbox")
)

// The release every case is rendered as: what the chart README's install
// commands use.
const (
	releaseName = "mailbox"
	namespace   = "openfaas"
)

// kubeVersion is the cluster version rendered and linted for. Helm built
// from the module proxy would otherwise assume v1.20.
var kubeVersion = &chartutil.KubeVersion{Version: "v1.31.0", Major: "1", Minor: "31"}

// valuesCase is one way of installing the chart: -f files (relative to the
// chart), --set and --set-json values, as on helm's command line.
type valuesCase struct {
	name  string
	files []string
	set   []string
	json  []string // --set-json: numbers arrive as float64, as from a file
}

// installCases are the ways the chart README installs the chart, plus
// variations that switch on every optional object.
var installCases = []valuesCase{
	{name: "default"},
	{name: "ce", files: []string{"values-ce.yaml"}},
	{name: "pro", files: []string{"values-pro.yaml"}},
	{name: "durable", files: []string{"values-durable.yaml"}},
	{name: "durable-single", files: []string{"values-durable.yaml"}, set: []string{"nats.replicas=1"}},
	{name: "durable-function", files: []string{"values-durable.yaml"}, set: []string{
		"function.create=true",
		"function.image=registry.example.com/mailbox:0.1.0",
		"function.environment.default_max_retries=20",
		"connector.environment.default_backoff=exponential",
		"connector.environment.retry_codes=429\\,503",
		"metrics.serviceMonitor.enabled=true",
		"metrics.serviceMonitor.labels.release=prometheus",
	}},
	{name: "pro-everything", files: []string{"values-pro.yaml"}, set: []string{
		"connector.replicas=3",
		"jetstream.replicas=3",
		"nats.credentials.secretName=mailbox-nats",
		"function.create=true",
		"function.image=registry.example.com/mailbox:0.1.0",
		"function.labels.com\\.openfaas\\.scale\\.min=2",
		"metrics.serviceMonitor.enabled=true",
		"gateway.url=https://gateway.example.com",
		"logFormat=text",
		"auth.tokenSecret=mailbox-token",
		"auth.allowNamespaces={openfaas-fn,team-a}",
	}},
}

// mergeValues merges the case's values the way helm's -f and --set do.
func mergeValues(t *testing.T, c valuesCase) map[string]any {
	t.Helper()
	opts := values.Options{Values: c.set, JSONValues: c.json}
	for _, f := range c.files {
		opts.ValueFiles = append(opts.ValueFiles, filepath.Join(chartDir, f))
	}
	vals, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		t.Fatalf("%s: values: %v", c.name, err)
	}
	return vals
}

// lint runs `helm lint --strict` on the chart with the case's values and
// returns every message of warning severity or above.
func lint(t *testing.T, c valuesCase) []string {
	t.Helper()
	l := action.NewLint()
	l.Strict = true
	l.Namespace = namespace
	l.KubeVersion = kubeVersion
	res := l.Run([]string{chartDir}, mergeValues(t, c))
	var out []string
	for _, err := range res.Errors {
		out = append(out, err.Error())
	}
	if res.TotalChartsLinted != 1 && len(out) == 0 {
		out = append(out, fmt.Sprintf("%d charts linted, want 1", res.TotalChartsLinted))
	}
	return out
}

// rendered is the output of `helm template` for one case.
type rendered struct {
	manifest string
	notes    string
	objects  []object
}

// object is one rendered Kubernetes object, decoded strictly into its type.
type object struct {
	source string // the template, from helm's "# Source:" line
	kind   string // "<apiVersion> <kind>"
	name   string
	value  any // *appsv1.Deployment, *corev1.Service, ..., *serviceMonitor, *function
}

// renderErr runs the equivalent of `helm template mailbox chart/mailbox -n
// openfaas` with the case's values and returns what helm returned.
func renderErr(t *testing.T, c valuesCase) (manifest, notes string, err error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	install := action.NewInstall(&action.Configuration{Log: t.Logf})
	install.DryRun = true
	install.DryRunOption = "client"
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = releaseName
	install.Namespace = namespace
	install.KubeVersion = kubeVersion
	install.IncludeCRDs = true
	rel, err := install.Run(chrt, mergeValues(t, c))
	if err != nil {
		return "", "", err
	}
	return rel.Manifest, rel.Info.Notes, nil
}

// render renders the case and decodes every object strictly; any error
// fails the test.
func render(t *testing.T, c valuesCase) rendered {
	t.Helper()
	manifest, notes, err := renderErr(t, c)
	if err != nil {
		t.Fatalf("%s: helm template: %v", c.name, err)
	}
	r := rendered{manifest: manifest, notes: notes}
	docs := releaseutil.SplitManifests(manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o, err := decode(docs[k])
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, docs[k])
		}
		if o != nil {
			r.objects = append(r.objects, *o)
		}
	}
	if len(r.objects) == 0 {
		t.Fatalf("%s: rendered no objects", c.name)
	}
	return r
}

// newObject returns a pointer to the Go type of apiVersion and kind. The
// custom resources' types are defined in crd_test.go.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &serviceMonitor{}, nil
	case "openfaas.com/v1 Function":
		return &function{}, nil
	}
	return nil, fmt.Errorf("no Go type for apiVersion %q kind %q", apiVersion, kind)
}

// decode decodes one YAML document strictly: an unknown or repeated field
// is an error. An empty document gives nil.
func decode(doc string) (*object, error) {
	source := ""
	for line := range strings.Lines(doc) {
		if s, ok := strings.CutPrefix(line, "# Source: "); ok {
			source = strings.TrimSpace(s)
		}
	}
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if tm.APIVersion == "" && tm.Kind == "" {
		var any map[string]any
		if err := yaml.Unmarshal([]byte(doc), &any); err != nil || len(any) != 0 {
			return nil, fmt.Errorf("%s: a document without apiVersion and kind", source)
		}
		return nil, nil
	}
	v, err := newObject(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
		return nil, fmt.Errorf("%s: strict decode into %T: %w", source, v, err)
	}
	meta, err := objectMeta(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if err := checkMeta(tm.Kind, meta); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return &object{source: source, kind: tm.APIVersion + " " + tm.Kind, name: meta.Name, value: v}, nil
}

func objectMeta(v any) (*metav1.ObjectMeta, error) {
	switch o := v.(type) {
	case *appsv1.Deployment:
		return &o.ObjectMeta, nil
	case *appsv1.StatefulSet:
		return &o.ObjectMeta, nil
	case *corev1.Service:
		return &o.ObjectMeta, nil
	case *corev1.ConfigMap:
		return &o.ObjectMeta, nil
	case *policyv1.PodDisruptionBudget:
		return &o.ObjectMeta, nil
	case *serviceMonitor:
		return &o.ObjectMeta, nil
	case *function:
		return &o.ObjectMeta, nil
	}
	return nil, fmt.Errorf("no metadata for %T", v)
}

// checkMeta applies the API server's rules for names and labels.
func checkMeta(kind string, m *metav1.ObjectMeta) error {
	var errs []string
	if kind == "Service" {
		errs = validation.IsDNS1035Label(m.Name)
	} else {
		errs = validation.IsDNS1123Subdomain(m.Name)
	}
	if m.Namespace == "" {
		errs = append(errs, "no namespace")
	}
	for k, v := range m.Labels {
		errs = append(errs, validation.IsQualifiedName(k)...)
		errs = append(errs, validation.IsValidLabelValue(v)...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s %q: %s", kind, m.Name, strings.Join(errs, "; "))
	}
	return nil
}

// find returns the objects of type T.
func find[T any](r rendered) []T {
	var out []T
	for _, o := range r.objects {
		if v, ok := o.value.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the single object of type T named name.
func one[T any](t *testing.T, r rendered, name string) T {
	t.Helper()
	var found []T
	for _, o := range r.objects {
		if v, ok := o.value.(T); ok && o.name == name {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T named %q, want 1", len(found), zero, name)
	}
	return found[0]
}

// readFile reads a file of the repository.
func readFile(t *testing.T, path ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{repoRoot}, path...)...))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
