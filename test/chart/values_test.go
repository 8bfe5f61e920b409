package chart

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestBadValuesFail: a misspelt key or a combination that cannot work
// fails `helm template` (and so install) with an error naming the value,
// instead of deploying something else.
func TestBadValuesFail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		c    valuesCase
		want string
	}{
		{"misspelt key", valuesCase{set: []string{"nats.deplyo=true"}}, "deplyo"},
		{"misspelt top-level key", valuesCase{set: []string{"backnd=jetstream"}}, "backnd"},
		{"unknown backend", valuesCase{set: []string{"backend=kafka"}}, "backend"},
		{"own NATS with stan", valuesCase{set: []string{"nats.deploy=true"}}, "nats.deploy"},
		{"two NATS servers", valuesCase{files: []string{"values-durable.yaml"}, set: []string{"nats.replicas=2"}}, "replicas"},
		{"more stream replicas than servers", valuesCase{files: []string{"values-durable.yaml"}, set: []string{"jetstream.replicas=5"}}, "jetstream.replicas"},
		{"function without image", valuesCase{set: []string{"function.create=true"}}, "function.image"},
		{"function env overriding the backend", valuesCase{set: []string{"function.create=true", "function.image=x", "function.environment.nats_url=nats://elsewhere:4222"}}, "function.environment.nats_url"},
		{"connector env overriding the chart", valuesCase{set: []string{"connector.environment.gateway_url=http://elsewhere:8080"}}, "connector.environment.gateway_url"},
		{"bad NATS URL", valuesCase{set: []string{"nats.url=http://nats:4222"}}, "url"},
		{"bad duration", valuesCase{set: []string{"connector.upstreamTimeout=soon"}}, "upstreamTimeout"},
		{"max_inflight out of range", valuesCase{set: []string{"connector.maxInflight=0"}}, "maxInflight"},
		// Dead letters and auth.
		{"the old JetStream-only dead-letter age", valuesCase{set: []string{"jetstream.deadLetterMaxAge=720h"}}, "deadLetterMaxAge"},
		{"misspelt deadLetters key", valuesCase{set: []string{"deadLetters.maxage=720h"}}, "maxage"},
		{"misspelt auth key", valuesCase{set: []string{"auth.tokensecret=mailbox-token"}}, "tokensecret"},
		{"bad dead-letter age", valuesCase{set: []string{"deadLetters.maxAge=forever"}}, "maxAge"},
		{"dead-letter limit not a number", valuesCase{set: []string{"deadLetters.limit=lots"}}, "limit"},
		{"dead-letter limit 0", valuesCase{set: []string{"deadLetters.limit=0"}}, "limit"},
		{"dead-letter limit too high", valuesCase{set: []string{"deadLetters.limit=10000001"}}, "limit"},
		{"replay rate without a unit", valuesCase{set: []string{"deadLetters.replayRate=50"}}, "replayRate"},
		{"replay rate 0", valuesCase{set: []string{"deadLetters.replayRate=0/s"}}, "replayRate"},
		{"requeueAuth not a boolean", valuesCase{set: []string{"auth.requeueAuth=yes"}}, "requeueAuth"},
		{"tokenSecret not a secret name", valuesCase{set: []string{"auth.tokenSecret=../token"}}, "tokenSecret"},
		{"tokenSecret not a string", valuesCase{json: []string{`auth={"tokenSecret":true}`}}, "tokenSecret"},
		{"allowFunctions a string", valuesCase{set: []string{"auth.allowFunctions=tweetpic"}}, "allowFunctions"},
		{"allowFunctions a bad name", valuesCase{set: []string{"auth.allowFunctions={Tweet_Pic}"}}, "allowFunctions"},
		{"allowNamespaces with a dot", valuesCase{set: []string{"auth.allowNamespaces={a.b}"}}, "allowNamespaces"},
		{"mailboxFunction a bad name", valuesCase{set: []string{"auth.mailboxFunction=Mailbox"}}, "mailboxFunction"},
		{"allowFunctions with the mailbox", valuesCase{set: []string{"auth.allowFunctions={tweetpic,mailbox}"}}, "auth.allowFunctions"},
		{"allowFunctions outside allowNamespaces", valuesCase{set: []string{"auth.allowFunctions={tweetpic.dev}", "auth.allowNamespaces={openfaas-fn}"}}, "auth.allowNamespaces"},
		{"function env overriding dead letters", valuesCase{set: []string{"function.create=true", "function.image=x", "function.environment.dead_letter_max_age=0"}}, "function.environment.dead_letter_max_age"},
		{"function env overriding the token", valuesCase{set: []string{"function.environment.auth_token_secret=t"}}, "function.environment.auth_token_secret"},
		{"function env overriding replay_rate", valuesCase{set: []string{"function.environment.replay_rate=1/s"}}, "function.environment.replay_rate"},
		{"connector env overriding the limit", valuesCase{set: []string{"connector.environment.dead_letter_limit=5"}}, "connector.environment.dead_letter_limit"},
		{"connector env overriding the allow list", valuesCase{set: []string{"connector.environment.allow_functions=a"}}, "connector.environment.allow_functions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.c.name = tc.name
			_, _, err := renderErr(t, tc.c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template with %v %v: error %v, want one naming %s", tc.c.files, tc.c.set, err, tc.want)
			}
		})
	}
}

// TestNotes checks what NOTES.txt tells users: how to call the mailbox, and
// the plain durability warning when the messages sit on a server that may
// keep them in memory.
func TestNotes(t *testing.T) {
	t.Parallel()
	call := []string{
		"curl -i http://gateway.openfaas:8080/function/mailbox/deadletter/<function>",
		`-H "X-Retries: 0"`, `-H "X-Max-Retries: 10"`, `-H "X-Delay-Duration: 60"`,
	}
	for _, tc := range []struct {
		c       valuesCase
		want    []string
		wantNot []string
	}{
		{installCases[0], append([]string{"WARNING: DURABILITY", "--store memory", "faas-cli deploy -f stack.yml --filter mailbox", "-e backend=stan", "-e nats_cluster_id=faas-cluster"}, call...), nil},
		{valuesCase{name: "pro", files: []string{"values-pro.yaml"}}, append([]string{"WARNING: DURABILITY", "no persistent volume", "2.12", "-e backend=jetstream", "-e jetstream_replicas=1"}, call...), []string{"--store memory"}},
		{valuesCase{name: "durable", files: []string{"values-durable.yaml"}}, append([]string{"3 server(s)", "-e nats_url=nats://mailbox-nats.openfaas:4222", "-e jetstream_replicas=3", "get pvc"}, call...), []string{"WARNING"}},
		{valuesCase{name: "function", files: []string{"values-durable.yaml"}, set: []string{"function.create=true", "function.image=registry.example.com/mailbox:0.1.0"}}, []string{"openfaas-fn/mailbox is created"}, []string{"faas-cli deploy"}},
	} {
		t.Run(tc.c.name, func(t *testing.T) {
			t.Parallel()
			_, notes, err := renderErr(t, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES.txt lacks %q:\n%s", w, notes)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(notes, w) {
					t.Errorf("NOTES.txt has %q:\n%s", w, notes)
				}
			}
		})
	}
}

// TestDurabilityIsSaidPlainly: the values, the CE and Pro values files and
// the chart README say that OpenFaaS's bundled NATS loses waiting messages
// on a restart, and the README recommends the durable choice.
func TestDurabilityIsSaidPlainly(t *testing.T) {
	t.Parallel()
	for file, want := range map[string][]string{
		"values.yaml":         {"--store memory", "values-durable.yaml"},
		"values-ce.yaml":      {"--store memory", "values-durable.yaml"},
		"values-pro.yaml":     {"no persistent volume", "values-durable.yaml", "2.12"},
		"values-durable.yaml": {"nats:", "deploy: true", "replicas: 3"},
		"README.md":           {"--store memory", "recommend", "values-durable.yaml", "docker build -f connector/Dockerfile", "build context is the repository\n   root"},
	} {
		text := readFile(t, "chart", "mailbox", file)
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("chart/mailbox/%s does not say %q", file, w)
			}
		}
	}
}

// TestReadmeListsEveryValue: the chart README's values table has one row
// per value of values.yaml (a leaf, or a map the schema leaves free-form),
// with its default, and no row for a value that does not exist.
func TestReadmeListsEveryValue(t *testing.T) {
	t.Parallel()
	var vals map[string]any
	if err := yaml.Unmarshal([]byte(readFile(t, "chart", "mailbox", "values.yaml")), &vals); err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal([]byte(readFile(t, "chart", "mailbox", "values.schema.json")), &schema); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{}
	leaves(t, "", vals, schema, want)

	readme := readFile(t, "chart", "mailbox", "README.md")
	_, table, ok := strings.Cut(readme, "\n## Values\n")
	if !ok {
		t.Fatal("the chart README has no section ## Values")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	rows := map[string]string{}
	for line := range strings.Lines(table) {
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		key := strings.Trim(strings.TrimSpace(cells[1]), "`")
		if _, dup := rows[key]; dup {
			t.Errorf("README: %s listed twice", key)
		}
		rows[key] = strings.TrimSpace(cells[2])
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	}) {
		def, ok := rows[k]
		if !ok {
			t.Errorf("README values table: no row for %s", k)
			continue
		}
		if w := defaultCell(want[k]); w != "" && def != w {
			t.Errorf("README values table: %s default %s, values.yaml has %s", k, def, w)
		}
	}
	for k := range rows {
		if _, ok := want[k]; !ok {
			t.Errorf("README values table: %s is not in values.yaml", k)
		}
	}
}

// leaves collects the values' paths, descending into a map only where the
// schema lists its properties.
func leaves(t *testing.T, prefix string, v any, schema map[string]any, out map[string]any) {
	t.Helper()
	props, _ := schema["properties"].(map[string]any)
	m, isMap := v.(map[string]any)
	if !isMap || props == nil {
		out[prefix] = v
		return
	}
	for k, sub := range m {
		s, ok := props[k].(map[string]any)
		if !ok {
			t.Errorf("values.schema.json: %s%s is not in the schema", prefix, k)
			continue
		}
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		leaves(t, p, sub, s, out)
	}
}

// defaultCell is how the README writes a default; "" for a non-empty map or
// list, whose default the README describes in words.
func defaultCell(v any) string {
	switch v := v.(type) {
	case string:
		if v == "" {
			return "`\"\"`"
		}
		return "`" + v + "`"
	case map[string]any:
		if len(v) == 0 {
			return "`{}`"
		}
	case []any:
		if len(v) == 0 {
			return "`[]`"
		}
	case nil:
		return "`null`"
	case float64: // JSON numbers; the chart's are integers
		return fmt.Sprintf("`%d`", int64(v))
	default:
		return fmt.Sprintf("`%v`", v)
	}
	return ""
}
