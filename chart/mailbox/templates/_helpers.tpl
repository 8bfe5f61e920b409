{{/*
Names. The full name is kept to 40 characters so that the longest name
derived from it, <fullname>-nats-headless, and the StatefulSet's pod and
revision names stay within Kubernetes' limits.
*/}}
{{- define "mailbox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailbox.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mailbox.connectorName" -}}
{{- include "mailbox.fullname" . }}-connector
{{- end -}}

{{- define "mailbox.natsName" -}}
{{- include "mailbox.fullname" . }}-nats
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "mailbox.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mailbox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openfaas
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "connector"). */}}
{{- define "mailbox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailbox.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The NATS URL the connector and the function use: the chart's own server
when nats.deploy is true (namespace-qualified, since the function runs in
another namespace), otherwise nats.url.
*/}}
{{- define "mailbox.natsURL" -}}
{{- if .Values.nats.deploy -}}
nats://{{ include "mailbox.natsName" . }}.{{ .Release.Namespace }}:4222
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* jetstream_replicas: jetstream.replicas, or when 0 nats.replicas if deployed, else 1. */}}
{{- define "mailbox.jetstreamReplicas" -}}
{{- $r := int .Values.jetstream.replicas -}}
{{- if eq $r 0 -}}
{{- if .Values.nats.deploy }}{{ int .Values.nats.replicas }}{{ else }}1{{ end -}}
{{- else -}}
{{- $r -}}
{{- end -}}
{{- end -}}

{{/*
Checks that values.schema.json cannot express. Every template includes it,
so that a bad combination fails lint, template and install alike.
*/}}
{{- define "mailbox.validate" -}}
{{- if and .Values.nats.deploy (ne .Values.backend "jetstream") -}}
{{- fail (printf "nats.deploy: the chart's own NATS server is JetStream; set backend: jetstream (backend is %q)" .Values.backend) -}}
{{- end -}}
{{- if and .Values.nats.deploy (gt (int .Values.jetstream.replicas) (int .Values.nats.replicas)) -}}
{{- fail (printf "jetstream.replicas: %d is more than nats.replicas (%d); a stream cannot have more replicas than there are servers" (int .Values.jetstream.replicas) (int .Values.nats.replicas)) -}}
{{- end -}}
{{- if and .Values.function.create (not .Values.function.image) -}}
{{- fail "function.image: required when function.create is true (the image faas-cli build -f stack.yml built)" -}}
{{- end -}}
{{- $self := include "mailbox.qualify" (include "mailbox.mailboxFunction" .) -}}
{{- range .Values.auth.allowFunctions -}}
{{- if eq (include "mailbox.qualify" .) $self -}}
{{- fail (printf "auth.allowFunctions: %q is the mailbox itself (%s), which it never targets" . $self) -}}
{{- end -}}
{{- $ns := include "mailbox.qualify" . | splitList "." | last -}}
{{- if and $.Values.auth.allowNamespaces (not (has $ns $.Values.auth.allowNamespaces)) -}}
{{- fail (printf "auth.allowFunctions: %q is in namespace %s, which auth.allowNamespaces does not list" . $ns) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := .Values.function.environment -}}
{{- if or (hasKey (include "mailbox.functionEnv" $ | fromYaml) $k) (has $k (include "mailbox.optionalKeys" $ | fromYamlArray)) -}}
{{- fail (printf "function.environment.%s: set by the chart from its values; change those instead" $k) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := .Values.connector.environment -}}
{{- if or (hasKey (include "mailbox.sharedEnv" $ | fromYaml) $k) (has $k (include "mailbox.optionalKeys" $ | fromYamlArray)) (has $k (list "basic_auth" "secret_mount_path" "max_inflight" "listen")) -}}
{{- fail (printf "connector.environment.%s: set by the chart from its values; change those instead" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Settings the chart sets only when their value is not empty, so not always
keys of mailbox.sharedEnv or mailbox.functionEnv; they come from the values
only, never from function.environment or connector.environment, so that
the function and the connector cannot disagree on them.
*/}}
{{- define "mailbox.optionalKeys" -}}
- nats_credentials_file
- auth_token_secret
- allow_functions
- allow_namespaces
- callback_allow_hosts
{{- end -}}

{{/* mailbox_function: auth.mailboxFunction, or function.name.function.namespace. */}}
{{- define "mailbox.mailboxFunction" -}}
{{- .Values.auth.mailboxFunction | default (printf "%s.%s" .Values.function.name .Values.function.namespace) -}}
{{- end -}}

{{/* A function name with the default namespace (openfaas-fn) added when it has none, as the mailbox compares them. */}}
{{- define "mailbox.qualify" -}}
{{- if contains "." . }}{{ . }}{{ else }}{{ printf "%s.openfaas-fn" . }}{{ end -}}
{{- end -}}

{{/*
The settings the connector and the mailbox function must share, as a YAML
map of setting name to string: the backend, NATS, and for JetStream the
stream, consumer and replicas, plus upstream_timeout (the streams'
duplicate window is computed from it), the dead letters' retention and limit (both processes
apply them; on JetStream the age also sets the dead-letter stream's age
limit), what the mailbox may target, where callbacks may go (gateway_url
and callback_allow_hosts: the API refuses at requeue what the connector
would refuse), logging, and whether statuses are recorded (an API
recording them beside a connector that does not would count delivered
messages as waiting). Settings of the other backend, and empty allow
lists, are left out.
*/}}
{{- define "mailbox.sharedEnv" -}}
backend: {{ .Values.backend | quote }}
nats_url: {{ include "mailbox.natsURL" . | quote }}
channel_prefix: {{ .Values.channelPrefix | quote }}
{{- if eq .Values.backend "stan" }}
nats_cluster_id: {{ .Values.nats.clusterID | quote }}
{{- else }}
jetstream_stream: {{ .Values.jetstream.stream | quote }}
jetstream_consumer: {{ .Values.jetstream.consumer | quote }}
jetstream_replicas: {{ include "mailbox.jetstreamReplicas" . | quote }}
{{- end }}
dead_letter_max_age: {{ .Values.deadLetters.maxAge | toString | quote }}
dead_letter_limit: {{ int64 .Values.deadLetters.limit | toString | quote }}
{{- with .Values.auth.allowFunctions }}
allow_functions: {{ join "," . | quote }}
{{- end }}
{{- with .Values.auth.allowNamespaces }}
allow_namespaces: {{ join "," . | quote }}
{{- end }}
mailbox_function: {{ include "mailbox.mailboxFunction" . | quote }}
gateway_url: {{ .Values.gateway.url | quote }}
{{- with .Values.callbacks.allowHosts }}
callback_allow_hosts: {{ join "," . | quote }}
{{- end }}
upstream_timeout: {{ .Values.connector.upstreamTimeout | toString | quote }}
log_level: {{ .Values.logLevel | quote }}
log_format: {{ .Values.logFormat | quote }}
statuses: {{ .Values.statuses | toString | quote }}
{{- end -}}

{{/*
The mailbox function's settings from the values: the shared ones, plus the
API's own: replay_rate, requeue_auth and, with auth.tokenSecret,
auth_token_secret (the secret is mounted at the default secret_mount_path,
/var/openfaas/secrets). nats_credentials_file is added by whoever mounts the
credentials.
*/}}
{{- define "mailbox.functionEnv" -}}
{{ include "mailbox.sharedEnv" . }}
replay_rate: {{ .Values.deadLetters.replayRate | quote }}
requeue_auth: {{ .Values.auth.requeueAuth | toString | quote }}
{{- with .Values.auth.tokenSecret }}
auth_token_secret: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "mailbox.connectorImage" -}}
{{ .Values.connector.image.repository }}:{{ .Values.connector.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Where the connector finds the NATS .creds file. */}}
{{- define "mailbox.natsCredentialsDir" -}}
/var/mailbox/nats
{{- end -}}

{{/* The hardened container securityContext shared by the connector and NATS. */}}
{{- define "mailbox.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
