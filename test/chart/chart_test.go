package chart

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/config"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Names of the objects for the release "mailbox" (the full name is the
// release name when it contains the chart name).
const (
	connectorName    = "mailbox-connector"
	natsName         = "mailbox-nats"
	natsHeadless     = "mailbox-nats-headless"
	natsConfigName   = "mailbox-nats-config"
	secretMountPath  = "/var/openfaas/secrets"
	defaultGateway   = "http://gateway.openfaas:8080"
	openfaasNATSURL  = "nats://nats.openfaas:4222"
	durableNATSURL   = "nats://mailbox-nats.openfaas:4222"
	connectorPort    = 8081
	natsClientPort   = 4222
	natsClusterPort  = 6222
	natsMonitorPort  = 8222
	natsDataMount    = "/data"
	durableClaimSize = "10Gi"
)

// want is what a case's rendering must hold.
type want struct {
	kinds          map[string]int    // objects per "<apiVersion> <kind>"
	connectorEnv   map[string]string // settings the connector must get
	absentEnv      []string          // settings the connector must not get
	replicas       int32             // connector replicas
	natsReplicas   int32             // StatefulSet replicas; 0 for none
	functionCreate bool
}

var (
	stanEnv = map[string]string{
		"backend":         "stan",
		"nats_url":        openfaasNATSURL,
		"nats_cluster_id": "faas-cluster",
		"channel_prefix":  "mailbox",
	}
	jetstreamOnly = []string{"jetstream_stream", "jetstream_consumer", "jetstream_replicas"}
	// functionOnly are the function's settings from the values, which the
	// connector (no API) never gets.
	functionOnly = []string{"replay_rate", "requeue_auth", "auth_token_secret"}
	common       = map[string]string{
		"gateway_url":       defaultGateway,
		"basic_auth":        "true",
		"secret_mount_path": secretMountPath,
		"listen":            ":8081",
		"max_inflight":      "16",
		"upstream_timeout":  "30s",
		"log_level":         "info",
		"log_format":        "json",
		"statuses":          "true",
		// Dead letters, on either backend: the connector removes what is
		// past them.
		"dead_letter_max_age": "336h",
		"dead_letter_limit":   "100000",
		"mailbox_function":    "mailbox.openfaas-fn",
	}
	// sharedSettings are the settings the function and the connector must
	// agree on; the chart gives both the same.
	sharedSettings = []string{"backend", "nats_url", "nats_cluster_id", "channel_prefix",
		"jetstream_stream", "jetstream_consumer", "jetstream_replicas", "dead_letter_max_age",
		"dead_letter_limit", "allow_functions", "allow_namespaces", "mailbox_function",
		"gateway_url", "callback_allow_hosts", "upstream_timeout", "statuses"}
)

func env(maps_ ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps_ {
		maps.Copy(out, m)
	}
	return out
}

func kinds(extra map[string]int) map[string]int {
	k := map[string]int{"apps/v1 Deployment": 1, "v1 Service": 1}
	for kind, n := range extra {
		k[kind] += n
	}
	return k
}

// durableKinds are the objects of the chart's own NATS: StatefulSet,
// client and headless Services, ConfigMap, and with more than one server a
// PodDisruptionBudget.
func durableKinds(servers int, extra map[string]int) map[string]int {
	k := kinds(map[string]int{"apps/v1 StatefulSet": 1, "v1 Service": 2, "v1 ConfigMap": 1})
	if servers > 1 {
		k["policy/v1 PodDisruptionBudget"] = 1
	}
	for kind, n := range extra {
		k[kind] += n
	}
	return k
}

var wants = map[string]want{
	"default": {
		kinds:        kinds(nil),
		connectorEnv: env(common, stanEnv),
		absentEnv:    append([]string{"nats_credentials_file", "allow_functions", "allow_namespaces"}, jetstreamOnly...),
		replicas:     1,
	},
	"ce": {
		kinds:        kinds(nil),
		connectorEnv: env(common, stanEnv),
		absentEnv:    jetstreamOnly,
		replicas:     1,
	},
	"pro": {
		kinds: kinds(nil),
		connectorEnv: env(common, map[string]string{
			"backend": "jetstream", "nats_url": openfaasNATSURL,
			"jetstream_stream": "mailbox", "jetstream_consumer": "connector",
			"jetstream_replicas": "1",
		}),
		absentEnv: []string{"nats_cluster_id", "nats_credentials_file"},
		replicas:  1,
	},
	"durable": {
		kinds: durableKinds(3, nil),
		connectorEnv: env(common, map[string]string{
			"backend": "jetstream", "nats_url": durableNATSURL, "jetstream_replicas": "3",
		}),
		absentEnv:    []string{"nats_cluster_id"},
		replicas:     1,
		natsReplicas: 3,
	},
	"durable-single": {
		kinds: durableKinds(1, nil),
		connectorEnv: env(common, map[string]string{
			"backend": "jetstream", "nats_url": durableNATSURL, "jetstream_replicas": "1",
		}),
		absentEnv:    []string{"nats_cluster_id"},
		replicas:     1,
		natsReplicas: 1,
	},
	"durable-function": {
		kinds: durableKinds(3, map[string]int{
			"openfaas.com/v1 Function": 1, "monitoring.coreos.com/v1 ServiceMonitor": 1,
		}),
		connectorEnv: env(common, map[string]string{
			"backend": "jetstream", "nats_url": durableNATSURL, "jetstream_replicas": "3",
		}),
		absentEnv:      []string{"nats_cluster_id"},
		replicas:       1,
		natsReplicas:   3,
		functionCreate: true,
	},
	"pro-everything": {
		kinds: kinds(map[string]int{
			"openfaas.com/v1 Function": 1, "monitoring.coreos.com/v1 ServiceMonitor": 1,
		}),
		connectorEnv: env(common, map[string]string{
			"backend": "jetstream", "nats_url": openfaasNATSURL, "jetstream_replicas": "3",
			"gateway_url": "https://gateway.example.com", "log_format": "text",
			"nats_credentials_file": "/var/mailbox/nats/nats.creds",
			"allow_namespaces":      "openfaas-fn,team-a",
		}),
		absentEnv:      []string{"nats_cluster_id", "allow_functions"},
		replicas:       3,
		functionCreate: true,
	},
}

// TestLint is `helm lint --strict` with the default values and each values
// file: no error and no warning.
func TestLint(t *testing.T) {
	t.Parallel()
	for _, c := range installCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if msgs := lint(t, c); len(msgs) > 0 {
				t.Errorf("helm lint --strict:\n%s", strings.Join(msgs, "\n"))
			}
		})
	}
}

// TestRenderedObjects is `helm template` for each case: every object
// decodes strictly into its API type, and the case renders the objects it
// should, with names and selectors that fit together.
func TestRenderedObjects(t *testing.T) {
	t.Parallel()
	for _, c := range installCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w, ok := wants[c.name]
			if !ok {
				t.Fatalf("no expectations for case %q", c.name)
			}
			r := render(t, c)
			got := map[string]int{}
			for _, o := range r.objects {
				got[o.kind]++
			}
			if !maps.Equal(got, w.kinds) {
				t.Errorf("objects %v, want %v", got, w.kinds)
			}
			checkSelectors(t, r)
		})
	}
}

// checkSelectors checks that every workload's selector matches its pod
// template, and every Service, PodDisruptionBudget and ServiceMonitor
// selects something the release renders.
func checkSelectors(t *testing.T, r rendered) {
	t.Helper()
	var pods []labels.Set
	for _, d := range find[*appsv1.Deployment](r) {
		pods = append(pods, selects(t, "Deployment "+d.Name, d.Spec.Selector, d.Spec.Template.Labels))
	}
	for _, s := range find[*appsv1.StatefulSet](r) {
		pods = append(pods, selects(t, "StatefulSet "+s.Name, s.Spec.Selector, s.Spec.Template.Labels))
	}
	matchesAPod := func(what string, sel labels.Selector) {
		t.Helper()
		if sel.Empty() {
			t.Errorf("%s: empty selector", what)
			return
		}
		for _, p := range pods {
			if sel.Matches(p) {
				return
			}
		}
		t.Errorf("%s: selector %s matches no pod template", what, sel)
	}
	for _, s := range find[*corev1.Service](r) {
		matchesAPod("Service "+s.Name, labels.SelectorFromSet(s.Spec.Selector))
	}
	for _, p := range find[*policyv1.PodDisruptionBudget](r) {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		matchesAPod("PodDisruptionBudget "+p.Name, sel)
	}
	for _, m := range find[*serviceMonitor](r) {
		sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var ok bool
		for _, s := range find[*corev1.Service](r) {
			if sel.Matches(labels.Set(s.Labels)) && s.Namespace == m.Namespace {
				ok = true
				for _, e := range m.Spec.Endpoints {
					if servicePort(s, e.Port) == nil {
						t.Errorf("ServiceMonitor %s: Service %s has no port %q", m.Name, s.Name, e.Port)
					}
				}
			}
		}
		if !ok {
			t.Errorf("ServiceMonitor %s selects no Service", m.Name)
		}
	}
}

func selects(t *testing.T, what string, ls *metav1.LabelSelector, podLabels map[string]string) labels.Set {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(podLabels)) {
		t.Errorf("%s: selector %s does not match its pod labels %v", what, sel, podLabels)
	}
	return labels.Set(podLabels)
}

func servicePort(s *corev1.Service, name string) *corev1.ServicePort {
	for i := range s.Spec.Ports {
		if s.Spec.Ports[i].Name == name {
			return &s.Spec.Ports[i]
		}
	}
	return nil
}

// containerPort resolves a probe's or Service's port (a number or a name)
// to a port of the container.
func containerPort(c corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// envMap returns a container's environment; a name given twice, or one
// taken from a reference rather than a literal value, is an error.
func envMap(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, e := range c.Env {
		if _, dup := m[e.Name]; dup {
			t.Errorf("container %s: env %s given twice", c.Name, e.Name)
		}
		if e.ValueFrom != nil {
			t.Errorf("container %s: env %s is not a literal value", c.Name, e.Name)
		}
		m[e.Name] = e.Value
	}
	return m
}

// watchdogSettings are of-watchdog's settings, which the function's
// environment may hold next to the mailbox's.
var watchdogSettings = []string{"read_timeout", "write_timeout", "exec_timeout", "healthcheck_interval",
	"max_inflight", "upstream_url", "mode", "prefix_logs", "log_buffer_size", "ready_path"}

// checkSettings checks that every name is one of the mailbox's settings
// (or one of also) and that the mailbox would start with them: config.Load,
// which the connector and the function run first, accepts them. defaults
// are the process's own defaults (the connector's listen).
func checkSettings(t *testing.T, what string, env map[string]string, defaults map[string]string, also ...string) config.Config {
	t.Helper()
	known := map[string]bool{}
	for _, s := range config.Settings() {
		known[s.Name] = true
	}
	for _, name := range also {
		known[name] = true
	}
	var environ []string
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if !known[k] {
			t.Errorf("%s: %s is not a mailbox setting", what, k)
		}
		if !slices.Contains(also, k) {
			environ = append(environ, k+"="+env[k])
		}
	}
	cfg, err := config.Load(config.Environ(environ), defaults)
	if err != nil {
		t.Errorf("%s: the mailbox rejects its environment: %v", what, err)
	}
	return cfg
}

// TestConnectorDeployment checks the connector for each case: replicas,
// its settings (accepted by the mailbox's own configuration loader), the
// probes on /healthz, the hardened securityContext and the gateway's
// basic-auth secret mounted where secret_mount_path says.
func TestConnectorDeployment(t *testing.T) {
	t.Parallel()
	for _, c := range installCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := wants[c.name]
			r := render(t, c)
			d := one[*appsv1.Deployment](t, r, connectorName)
			if d.Spec.Replicas == nil || *d.Spec.Replicas != w.replicas {
				t.Errorf("replicas %v, want %d", d.Spec.Replicas, w.replicas)
			}
			pod := d.Spec.Template.Spec
			ctr := container(t, pod, "connector")

			// Settings.
			env := envMap(t, ctr)
			for k, v := range w.connectorEnv {
				if env[k] != v {
					t.Errorf("env %s = %q, want %q", k, env[k], v)
				}
			}
			for _, k := range append(slices.Clone(w.absentEnv), functionOnly...) {
				if v, ok := env[k]; ok {
					t.Errorf("env %s = %q, want it absent", k, v)
				}
			}
			cfg := checkSettings(t, "connector", env, map[string]string{"listen": ":8081"})
			if cfg.Listen != ":8081" {
				t.Errorf("listen %q, want :8081", cfg.Listen)
			}
			if c.name == "durable-function" && (cfg.DefaultBackoff != "exponential" || !slices.Equal(cfg.RetryCodes, []int{429, 503})) {
				t.Errorf("connector.environment: the connector reads backoff %q and retry codes %v, want exponential and [429 503]", cfg.DefaultBackoff, cfg.RetryCodes)
			}

			// Port and probes.
			if p, ok := containerPort(ctr, intstr.FromString("http")); !ok || p != connectorPort {
				t.Errorf("container port http = %d, want %d", p, connectorPort)
			}
			for name, probe := range map[string]*corev1.Probe{"readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe} {
				if probe == nil || probe.HTTPGet == nil {
					t.Errorf("%s probe: not an HTTP GET", name)
					continue
				}
				if probe.HTTPGet.Path != "/healthz" {
					t.Errorf("%s probe path %q, want /healthz", name, probe.HTTPGet.Path)
				}
				if p, ok := containerPort(ctr, probe.HTTPGet.Port); !ok || p != connectorPort {
					t.Errorf("%s probe port %s is not container port %d", name, probe.HTTPGet.Port.String(), connectorPort)
				}
			}

			checkSecurity(t, "connector", pod, ctr)
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("the service account token is mounted; the connector does not use the Kubernetes API")
			}

			// The gateway's basic-auth secret at secret_mount_path.
			checkSecretMount(t, pod, ctr, env["secret_mount_path"], "basic-auth", "basic-auth-user", "basic-auth-password")
			if f := env["nats_credentials_file"]; f != "" {
				dir, key := f[:strings.LastIndex(f, "/")], f[strings.LastIndex(f, "/")+1:]
				checkSecretMount(t, pod, ctr, dir, "mailbox-nats", key)
			}

			// Shutdown: the drain (2 × upstream_timeout + 5 s) after the
			// HTTP server's 10 s must fit in the grace period.
			grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
			if need := 2*cfg.UpstreamTimeout + 15*time.Second; grace < need {
				t.Errorf("terminationGracePeriodSeconds %s, want at least %s", grace, need)
			}

			// The metrics Service reaches the container port.
			svc := one[*corev1.Service](t, r, connectorName)
			sp := servicePort(svc, "metrics")
			if sp == nil {
				t.Fatal("metrics Service has no port named metrics")
			}
			if p, ok := containerPort(ctr, sp.TargetPort); !ok || p != connectorPort {
				t.Errorf("metrics Service targets %s, not container port %d", sp.TargetPort.String(), connectorPort)
			}
			if a := d.Spec.Template.Annotations; a["prometheus.io.scrape"] != "true" || a["prometheus.io.port"] != strconv.Itoa(connectorPort) {
				t.Errorf("pod annotations %v: want OpenFaaS's Prometheus to scrape port %d", a, connectorPort)
			}
		})
	}
}

// checkSecurity checks the pod and container securityContext: non-root,
// read-only root filesystem, no privilege escalation, every capability
// dropped, the runtime's default seccomp profile.
func checkSecurity(t *testing.T, what string, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	ps := pod.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
		t.Errorf("%s: pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", what, ps)
	}
	if ps == nil || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile is not RuntimeDefault", what)
	}
	cs := c.SecurityContext
	if cs == nil {
		t.Fatalf("%s: container has no securityContext", what)
	}
	if cs.RunAsNonRoot == nil || !*cs.RunAsNonRoot {
		t.Errorf("%s: container runAsNonRoot is not true", what)
	}
	if cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", what)
	}
	if cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", what)
	}
	if cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(cs.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities %+v, want drop [ALL] and nothing added", what, cs.Capabilities)
	}
	if cs.SeccompProfile == nil || cs.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: container seccompProfile is not RuntimeDefault", what)
	}
	if cs.Privileged != nil && *cs.Privileged {
		t.Errorf("%s: privileged", what)
	}
}

// checkSecretMount checks that the container mounts secret read-only at
// dir, with exactly the given keys as files.
func checkSecretMount(t *testing.T, pod corev1.PodSpec, c corev1.Container, dir, secret string, keys ...string) {
	t.Helper()
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dir {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Errorf("nothing mounted at %s", dir)
		return
	}
	if !mount.ReadOnly {
		t.Errorf("%s is mounted writable", dir)
	}
	for _, v := range pod.Volumes {
		if v.Name != mount.Name {
			continue
		}
		if v.Secret == nil || v.Secret.SecretName != secret {
			t.Errorf("volume %s at %s is not the secret %s: %+v", v.Name, dir, secret, v.VolumeSource)
			return
		}
		var files []string
		for _, it := range v.Secret.Items {
			if it.Key != it.Path {
				t.Errorf("secret %s: key %s is mounted as %s", secret, it.Key, it.Path)
			}
			files = append(files, it.Path)
		}
		if !slices.Equal(files, keys) {
			t.Errorf("secret %s mounted with files %v, want %v", secret, files, keys)
		}
		return
	}
	t.Errorf("no volume %s for %s", mount.Name, dir)
}

// TestDurableNATS checks the chart's own NATS server: the connector's
// nats_url reaches its client Service, jetstream_replicas equals the
// StatefulSet's replicas, each server has a persistent volume claim at its
// store directory, and the servers are found through the headless Service.
func TestDurableNATS(t *testing.T) {
	t.Parallel()
	for _, c := range installCases {
		w := wants[c.name]
		if w.natsReplicas == 0 {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := render(t, c)
			sts := one[*appsv1.StatefulSet](t, r, natsName)
			d := one[*appsv1.Deployment](t, r, connectorName)
			env := envMap(t, container(t, d.Spec.Template.Spec, "connector"))

			if sts.Spec.Replicas == nil || *sts.Spec.Replicas != w.natsReplicas {
				t.Errorf("StatefulSet replicas %v, want %d", sts.Spec.Replicas, w.natsReplicas)
			}
			if env["jetstream_replicas"] != strconv.Itoa(int(*sts.Spec.Replicas)) {
				t.Errorf("jetstream_replicas %q, StatefulSet replicas %d", env["jetstream_replicas"], *sts.Spec.Replicas)
			}
			if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
				t.Errorf("podManagementPolicy %q, want Parallel so that a cluster can form", sts.Spec.PodManagementPolicy)
			}
			// Pod names, <sts>-<n>, must be DNS labels.
			if errs := validation.IsDNS1123Label(fmt.Sprintf("%s-%d", sts.Name, w.natsReplicas-1)); len(errs) > 0 {
				t.Errorf("pod names: %v", errs)
			}

			// nats_url -> client Service -> NATS client port.
			u, err := url.Parse(env["nats_url"])
			if err != nil {
				t.Fatal(err)
			}
			host := strings.Split(u.Hostname(), ".")
			if len(host) != 2 || host[1] != namespace {
				t.Fatalf("nats_url %s: want <service>.%s, reachable from the function's namespace", u, namespace)
			}
			client := one[*corev1.Service](t, r, host[0])
			ctr := container(t, sts.Spec.Template.Spec, "nats")
			if !labels.SelectorFromSet(client.Spec.Selector).Matches(labels.Set(sts.Spec.Template.Labels)) {
				t.Errorf("Service %s does not select the NATS pods", client.Name)
			}
			var reached bool
			for _, p := range client.Spec.Ports {
				if strconv.Itoa(int(p.Port)) == u.Port() {
					cp, ok := containerPort(ctr, p.TargetPort)
					reached = ok && cp == natsClientPort
				}
			}
			if !reached {
				t.Errorf("nats_url port %s does not reach the NATS client port %d", u.Port(), natsClientPort)
			}

			// The headless Service gives every server a name for the routes.
			headless := one[*corev1.Service](t, r, natsHeadless)
			if sts.Spec.ServiceName != headless.Name || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
				t.Errorf("StatefulSet serviceName %q, headless Service %s clusterIP %q publishNotReadyAddresses %v",
					sts.Spec.ServiceName, headless.Name, headless.Spec.ClusterIP, headless.Spec.PublishNotReadyAddresses)
			}
			if p := servicePort(headless, "cluster"); p == nil || p.Port != natsClusterPort {
				t.Errorf("headless Service has no cluster port %d", natsClusterPort)
			}

			// A persistent volume per server at the store directory.
			if len(sts.Spec.VolumeClaimTemplates) != 1 {
				t.Fatalf("%d volumeClaimTemplates, want 1", len(sts.Spec.VolumeClaimTemplates))
			}
			pvc := sts.Spec.VolumeClaimTemplates[0]
			if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse(durableClaimSize)) != 0 {
				t.Errorf("claim size %s, want %s", got.String(), durableClaimSize)
			}
			if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) {
				t.Errorf("claim access modes %v", pvc.Spec.AccessModes)
			}
			var mounted bool
			for _, m := range ctr.VolumeMounts {
				if m.Name == pvc.Name && m.MountPath == natsDataMount && !m.ReadOnly {
					mounted = true
				}
			}
			for _, v := range sts.Spec.Template.Spec.Volumes {
				if v.Name == pvc.Name {
					t.Errorf("volume %s shadows the claim template", v.Name)
				}
			}
			if !mounted {
				t.Errorf("claim %s is not mounted writable at %s", pvc.Name, natsDataMount)
			}

			// Probes on the monitoring port, and the same hardening as the
			// connector.
			for name, probe := range map[string]*corev1.Probe{"startup": ctr.StartupProbe, "readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe} {
				if probe == nil || probe.HTTPGet == nil || !strings.HasPrefix(probe.HTTPGet.Path, "/healthz") {
					t.Errorf("%s probe: want an HTTP GET of /healthz", name)
					continue
				}
				if p, ok := containerPort(ctr, probe.HTTPGet.Port); !ok || p != natsMonitorPort {
					t.Errorf("%s probe port %s is not the monitoring port", name, probe.HTTPGet.Port.String())
				}
			}
			checkSecurity(t, "nats", sts.Spec.Template.Spec, ctr)
			if fs := sts.Spec.Template.Spec.SecurityContext.FSGroup; fs == nil {
				t.Error("no fsGroup: the server's user cannot write its volume")
			}

			// More than one server: a disruption budget keeps the quorum.
			pdbs := find[*policyv1.PodDisruptionBudget](r)
			if w.natsReplicas > 1 {
				if len(pdbs) != 1 || pdbs[0].Spec.MaxUnavailable == nil || pdbs[0].Spec.MaxUnavailable.IntValue() != 1 {
					t.Errorf("PodDisruptionBudgets %v, want one with maxUnavailable 1", pdbs)
				}
			} else if len(pdbs) != 0 {
				t.Errorf("%d PodDisruptionBudgets for one server", len(pdbs))
			}
		})
	}
}

// TestFunction checks the optional openfaas.com/v1 Function: its image,
// name and namespace, and settings that the mailbox accepts and that match
// the connector's for everything both must share.
func TestFunction(t *testing.T) {
	t.Parallel()
	for _, c := range installCases {
		w := wants[c.name]
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := render(t, c)
			fns := find[*function](r)
			if !w.functionCreate {
				if len(fns) != 0 {
					t.Errorf("%d Functions, want none", len(fns))
				}
				return
			}
			fn := one[*function](t, r, "mailbox")
			if fn.Namespace != "openfaas-fn" || fn.Spec.Name != fn.Name {
				t.Errorf("Function %s/%s with spec.name %q", fn.Namespace, fn.Name, fn.Spec.Name)
			}
			if fn.Spec.Image != "registry.example.com/mailbox:0.1.0" {
				t.Errorf("image %q", fn.Spec.Image)
			}
			if !fn.Spec.ReadOnlyRootFilesystem {
				t.Error("readOnlyRootFilesystem is false")
			}
			cfg := checkSettings(t, "function", fn.Spec.Environment, nil, watchdogSettings...)
			for _, k := range []string{"read_timeout", "write_timeout", "exec_timeout"} {
				if _, err := time.ParseDuration(fn.Spec.Environment[k]); err != nil {
					t.Errorf("watchdog %s %q: %v", k, fn.Spec.Environment[k], err)
				}
			}
			if fn.Spec.Labels["com.openfaas.scale.zero"] != "false" {
				t.Errorf("labels %v: the mailbox may scale to zero", fn.Spec.Labels)
			}

			d := one[*appsv1.Deployment](t, r, connectorName)
			connector := envMap(t, container(t, d.Spec.Template.Spec, "connector"))
			for _, k := range sharedSettings {
				if fn.Spec.Environment[k] != connector[k] {
					t.Errorf("%s: function %q, connector %q", k, fn.Spec.Environment[k], connector[k])
				}
			}
			if fn.Spec.Environment["replay_rate"] != "50/s" || fn.Spec.Environment["requeue_auth"] != "true" {
				t.Errorf("replay_rate %q, requeue_auth %q; want the defaults 50/s and true",
					fn.Spec.Environment["replay_rate"], fn.Spec.Environment["requeue_auth"])
			}
			if s := fn.Spec.Environment["auth_token_secret"]; s != "" {
				if !slices.Contains(fn.Spec.Secrets, s) || cfg.AuthTokenSecret != s || cfg.SecretMountPath != secretMountPath {
					t.Errorf("auth_token_secret %q (read from %s) with secrets %v", s, cfg.SecretMountPath, fn.Spec.Secrets)
				}
			}
			if f := fn.Spec.Environment["nats_credentials_file"]; f != "" {
				if !slices.Contains(fn.Spec.Secrets, "mailbox-nats") || f != "/var/openfaas/secrets/nats.creds" {
					t.Errorf("nats_credentials_file %q with secrets %v", f, fn.Spec.Secrets)
				}
			}
			if c.name == "durable-function" && cfg.DefaultMaxRetries != 20 {
				t.Errorf("function.environment default_max_retries: the mailbox reads %d, want 20", cfg.DefaultMaxRetries)
			}
			if c.name == "pro-everything" && fn.Spec.Labels["com.openfaas.scale.min"] != "2" {
				t.Errorf("labels %v", fn.Spec.Labels)
			}
		})
	}
}

// TestServiceMonitor checks the optional ServiceMonitor scrapes /metrics.
func TestServiceMonitor(t *testing.T) {
	t.Parallel()
	c := installCases[slices.IndexFunc(installCases, func(c valuesCase) bool { return c.name == "durable-function" })]
	r := render(t, c)
	m := one[*serviceMonitor](t, r, connectorName)
	if len(m.Spec.Endpoints) != 1 || m.Spec.Endpoints[0].Path != "/metrics" || m.Spec.Endpoints[0].Port != "metrics" {
		t.Errorf("endpoints %+v, want /metrics on port metrics", m.Spec.Endpoints)
	}
	if m.Labels["release"] != "prometheus" {
		t.Errorf("labels %v: metrics.serviceMonitor.labels not applied", m.Labels)
	}
}

// TestCEValuesAreTheDefaults: values-ce.yaml spells out the defaults, so
// both render the same objects.
func TestCEValuesAreTheDefaults(t *testing.T) {
	t.Parallel()
	def, _, err := renderErr(t, valuesCase{name: "default"})
	if err != nil {
		t.Fatal(err)
	}
	ce, _, err := renderErr(t, valuesCase{name: "ce", files: []string{"values-ce.yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	if def != ce {
		t.Errorf("values-ce.yaml renders differently from the defaults:\n%s\n---\n%s", def, ce)
	}
}

// withFunction adds the Function to a case, so that the function's
// settings render as an object.
func withFunction(c valuesCase, set ...string) valuesCase {
	c.set = append(slices.Clone(c.set), "function.create=true", "function.image=registry.example.com/mailbox:0.1.0")
	c.set = append(c.set, set...)
	return c
}

// processEnv renders the case and returns the function's and the
// connector's settings, each checked by the mailbox's configuration loader.
func processEnv(t *testing.T, c valuesCase) (fnEnv, connEnv map[string]string, fnCfg, connCfg config.Config, fn *function) {
	t.Helper()
	r := render(t, c)
	fns := find[*function](r)
	if len(fns) != 1 {
		t.Fatalf("%d Functions, want 1", len(fns))
	}
	fn = fns[0]
	d := one[*appsv1.Deployment](t, r, connectorName)
	connEnv = envMap(t, container(t, d.Spec.Template.Spec, "connector"))
	fnCfg = checkSettings(t, "function", fn.Spec.Environment, nil, watchdogSettings...)
	connCfg = checkSettings(t, "connector", connEnv, map[string]string{"listen": ":8081"})
	return fn.Spec.Environment, connEnv, fnCfg, connCfg, fn
}

// TestDeadLetterSettings: the function and the connector both get
// dead_letter_max_age and dead_letter_limit, on either backend, 336h and
// 100000 by default, and the values deadLetters.* when set (a number from a
// values file too, which helm reads as a float).
func TestDeadLetterSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		c        valuesCase
		maxAge   string
		age      time.Duration
		limit    string
		rate     string
		perSec   float64
		backend  string
		wantFail bool
	}{
		{c: withFunction(valuesCase{name: "stan"}), maxAge: "336h", age: 336 * time.Hour, limit: "100000", rate: "50/s", perSec: 50, backend: "stan"},
		{c: withFunction(valuesCase{name: "pro", files: []string{"values-pro.yaml"}}), maxAge: "336h", age: 336 * time.Hour, limit: "100000", rate: "50/s", perSec: 50, backend: "jetstream"},
		{c: withFunction(valuesCase{name: "durable", files: []string{"values-durable.yaml"}}), maxAge: "336h", age: 336 * time.Hour, limit: "100000", rate: "50/s", perSec: 50, backend: "jetstream"},
		{c: withFunction(valuesCase{name: "stan-set"}, "deadLetters.maxAge=0", "deadLetters.limit=10000000", "deadLetters.replayRate=600/m"),
			maxAge: "0", age: 0, limit: "10000000", rate: "600/m", perSec: 10, backend: "stan"},
		{c: valuesCase{name: "jetstream-json", files: []string{"values-durable.yaml"},
			set:  []string{"function.create=true", "function.image=registry.example.com/mailbox:0.1.0"},
			json: []string{`deadLetters={"maxAge":"720h","limit":10000000,"replayRate":"5/s"}`}},
			maxAge: "720h", age: 720 * time.Hour, limit: "10000000", rate: "5/s", perSec: 5, backend: "jetstream"},
	} {
		t.Run(tc.c.name, func(t *testing.T) {
			t.Parallel()
			fnEnv, connEnv, fnCfg, connCfg, _ := processEnv(t, tc.c)
			for what, env := range map[string]map[string]string{"function": fnEnv, "connector": connEnv} {
				if env["backend"] != tc.backend || env["dead_letter_max_age"] != tc.maxAge || env["dead_letter_limit"] != tc.limit {
					t.Errorf("%s: backend %q, dead_letter_max_age %q, dead_letter_limit %q; want %s, %s, %s", what,
						env["backend"], env["dead_letter_max_age"], env["dead_letter_limit"], tc.backend, tc.maxAge, tc.limit)
				}
			}
			for what, cfg := range map[string]config.Config{"function": fnCfg, "connector": connCfg} {
				if cfg.DeadLetterMaxAge != tc.age || strconv.Itoa(cfg.DeadLetterLimit) != tc.limit {
					t.Errorf("%s: the mailbox reads max age %s and limit %d, want %s and %s", what, cfg.DeadLetterMaxAge, cfg.DeadLetterLimit, tc.age, tc.limit)
				}
			}
			if fnEnv["replay_rate"] != tc.rate || fnCfg.ReplayRate.PerSecond() != tc.perSec {
				t.Errorf("function: replay_rate %q (%v/s), want %s", fnEnv["replay_rate"], fnCfg.ReplayRate.PerSecond(), tc.rate)
			}
		})
	}
}

// TestAuthToken: auth.tokenSecret mounts the secret on the Function and
// names it in the function's auth_token_secret (the connector has no API,
// so neither); requeueAuth sets requeue_auth; without a Function, NOTES.txt
// tells faas-cli the same.
func TestAuthToken(t *testing.T) {
	t.Parallel()
	t.Run("token", func(t *testing.T) {
		t.Parallel()
		fnEnv, connEnv, fnCfg, _, fn := processEnv(t, withFunction(valuesCase{name: "token"}, "auth.tokenSecret=mailbox-token"))
		if !slices.Equal(fn.Spec.Secrets, []string{"mailbox-token"}) {
			t.Errorf("secrets %v, want [mailbox-token]", fn.Spec.Secrets)
		}
		if fnEnv["auth_token_secret"] != "mailbox-token" || fnCfg.AuthTokenSecret != "mailbox-token" || fnCfg.SecretMountPath != secretMountPath {
			t.Errorf("auth_token_secret %q, the mailbox reads %q under %s", fnEnv["auth_token_secret"], fnCfg.AuthTokenSecret, fnCfg.SecretMountPath)
		}
		if !fnCfg.RequeueAuth || fnEnv["requeue_auth"] != "true" {
			t.Errorf("requeue_auth %q: want requeues to need the token by default", fnEnv["requeue_auth"])
		}
		for _, k := range functionOnly {
			if v, ok := connEnv[k]; ok {
				t.Errorf("connector: %s = %q, a setting of the API only", k, v)
			}
		}
	})
	t.Run("connector token", func(t *testing.T) {
		t.Parallel()
		// The connector signs what it delivers with the same token, from a
		// secret in its own namespace, beside the gateway's credentials.
		c := withFunction(valuesCase{name: "connector-token"}, "auth.tokenSecret=mailbox-token", "auth.connectorTokenSecret=mailbox-token")
		_, connEnv, _, connCfg, _ := processEnv(t, c)
		if connEnv["auth_token_secret"] != "mailbox-token" || connCfg.AuthTokenSecret != "mailbox-token" || connCfg.SecretMountPath != secretMountPath {
			t.Errorf("connector auth_token_secret %q under %s", connEnv["auth_token_secret"], connCfg.SecretMountPath)
		}
		for _, k := range []string{"replay_rate", "requeue_auth"} {
			if v, ok := connEnv[k]; ok {
				t.Errorf("connector: %s = %q, a setting of the API only", k, v)
			}
		}
		d := one[*appsv1.Deployment](t, render(t, c), connectorName)
		pod := d.Spec.Template.Spec
		ctr := container(t, pod, "connector")
		var mount *corev1.VolumeMount
		for i := range ctr.VolumeMounts {
			if ctr.VolumeMounts[i].MountPath == secretMountPath {
				mount = &ctr.VolumeMounts[i]
			}
		}
		if mount == nil || !mount.ReadOnly {
			t.Fatalf("secret_mount_path mounted %+v, want read-only", mount)
		}
		var files []string
		for _, v := range pod.Volumes {
			if v.Name != mount.Name || v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				for _, it := range src.Secret.Items {
					files = append(files, src.Secret.Name+"/"+it.Key+"->"+it.Path)
				}
			}
		}
		want := []string{"basic-auth/basic-auth-user->basic-auth-user", "basic-auth/basic-auth-password->basic-auth-password", "mailbox-token/mailbox-token->mailbox-token"}
		if !slices.Equal(files, want) {
			t.Errorf("files at secret_mount_path %v, want %v", files, want)
		}
	})
	t.Run("token and NATS credentials", func(t *testing.T) {
		t.Parallel()
		_, _, _, _, fn := processEnv(t, withFunction(valuesCase{name: "both"},
			"auth.tokenSecret=mailbox-token", "auth.requeueAuth=false", "nats.credentials.secretName=mailbox-nats"))
		if !slices.Equal(fn.Spec.Secrets, []string{"mailbox-nats", "mailbox-token"}) {
			t.Errorf("secrets %v, want [mailbox-nats mailbox-token]", fn.Spec.Secrets)
		}
		if fn.Spec.Environment["requeue_auth"] != "false" {
			t.Errorf("requeue_auth %q with auth.requeueAuth=false", fn.Spec.Environment["requeue_auth"])
		}
	})
	t.Run("no token", func(t *testing.T) {
		t.Parallel()
		fnEnv, _, fnCfg, _, fn := processEnv(t, withFunction(valuesCase{name: "none"}))
		if len(fn.Spec.Secrets) != 0 || fnCfg.AuthTokenSecret != "" {
			t.Errorf("secrets %v, auth_token_secret %q; want none by default", fn.Spec.Secrets, fnEnv["auth_token_secret"])
		}
	})
	t.Run("notes", func(t *testing.T) {
		t.Parallel()
		_, notes, err := renderErr(t, valuesCase{name: "notes", set: []string{"auth.tokenSecret=mailbox-token"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"--secret mailbox-token", "-e auth_token_secret=mailbox-token", "-e requeue_auth=true",
			"-e dead_letter_max_age=336h", "-e dead_letter_limit=100000", `-H "Authorization: Bearer $TOKEN"`,
			"/function/mailbox/deadletters", "/function/mailbox/ui"} {
			if !strings.Contains(notes, w) {
				t.Errorf("NOTES.txt lacks %q:\n%s", w, notes)
			}
		}
		_, notes, err = renderErr(t, valuesCase{name: "notes-open"})
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"auth.tokenSecret=mailbox-token", "faas-cli secret create mailbox-token"} {
			if !strings.Contains(notes, w) {
				t.Errorf("NOTES.txt without a token lacks %q:\n%s", w, notes)
			}
		}
		if strings.Contains(notes, "Authorization") || strings.Contains(notes, "auth_token_secret") {
			t.Errorf("NOTES.txt without a token mentions one:\n%s", notes)
		}
	})
}

// TestTargets: the allow lists reach the function and the connector
// comma-joined, and mailbox_function names the chart's own function.
func TestTargets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		c                 valuesCase
		functions, spaces string
		self              string
	}{
		{c: withFunction(valuesCase{name: "lists"}, "auth.allowFunctions={tweetpic,resize.team-a}", "auth.allowNamespaces={openfaas-fn,team-a}"),
			functions: "tweetpic,resize.team-a", spaces: "openfaas-fn,team-a", self: "mailbox.openfaas-fn"},
		{c: valuesCase{name: "json", set: []string{"function.create=true", "function.image=x", "function.name=mb", "function.namespace=fns"},
			json: []string{`auth={"allowFunctions":["tweetpic.fns"]}`}},
			functions: "tweetpic.fns", self: "mb.fns"},
		{c: withFunction(valuesCase{name: "own name"}, "auth.mailboxFunction=requeue"), self: "requeue"},
	} {
		t.Run(tc.c.name, func(t *testing.T) {
			t.Parallel()
			fnEnv, connEnv, fnCfg, connCfg, _ := processEnv(t, tc.c)
			for what, env := range map[string]map[string]string{"function": fnEnv, "connector": connEnv} {
				for k, want := range map[string]string{"allow_functions": tc.functions, "allow_namespaces": tc.spaces, "mailbox_function": tc.self} {
					if v, ok := env[k]; v != want || (want == "" && ok) {
						t.Errorf("%s: %s = %q (set %v), want %q", what, k, v, ok, want)
					}
				}
			}
			for what, cfg := range map[string]config.Config{"function": fnCfg, "connector": connCfg} {
				if got := strings.Join(cfg.AllowFunctions, ","); got != tc.functions {
					t.Errorf("%s: the mailbox reads allow_functions %q, want %q", what, got, tc.functions)
				}
				if got := strings.Join(cfg.AllowNamespaces, ","); got != tc.spaces {
					t.Errorf("%s: the mailbox reads allow_namespaces %q, want %q", what, got, tc.spaces)
				}
				if cfg.MailboxFunction != tc.self {
					t.Errorf("%s: the mailbox reads mailbox_function %q, want %q", what, cfg.MailboxFunction, tc.self)
				}
			}
		})
	}
}
