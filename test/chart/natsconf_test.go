package chart

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// natsConfig renders a case and returns the NATS StatefulSet and its
// configuration file, parsed by nats-server itself as the pod named pod
// would parse it.
func natsConfig(t *testing.T, c valuesCase, pod string) (*appsv1.StatefulSet, *server.Options) {
	t.Helper()
	r := render(t, c)
	sts := one[*appsv1.StatefulSet](t, r, natsName)
	cm := one[*corev1.ConfigMap](t, r, natsConfigName)
	ctr := container(t, sts.Spec.Template.Spec, "nats")

	// The server reads the file the container's command names, from the
	// ConfigMap mounted there.
	var confPath string
	for i, a := range ctr.Command {
		if a == "--config" && i+1 < len(ctr.Command) {
			confPath = ctr.Command[i+1]
		}
	}
	var data string
	for _, m := range ctr.VolumeMounts {
		for _, v := range sts.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
				rel, err := filepath.Rel(m.MountPath, confPath)
				if err == nil && !strings.HasPrefix(rel, "..") {
					data = cm.Data[rel]
				}
			}
		}
	}
	if data == "" {
		t.Fatalf("command %v: %s is not a key of the mounted ConfigMap %s", ctr.Command, confPath, cm.Name)
	}

	// SERVER_NAME comes from the pod's name.
	var fromPodName bool
	for _, e := range ctr.Env {
		if e.Name == "SERVER_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			fromPodName = true
		}
	}
	if !fromPodName {
		t.Error("SERVER_NAME is not the pod's name")
	}
	t.Setenv("SERVER_NAME", pod)

	file := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("nats-server rejects the rendered configuration: %v\n%s", err, data)
	}
	return sts, opts
}

// TestNATSConfiguration parses the chart's nats.conf with nats-server's
// own parser: JetStream on the volume, the 8 MiB payload, a unique server
// name, and for three servers a cluster with a route to each pod through
// the headless Service.
func TestNATSConfiguration(t *testing.T) {
	// Not parallel: t.Setenv.
	for _, c := range installCases {
		servers := int(wants[c.name].natsReplicas)
		if servers == 0 {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			sts, opts := natsConfig(t, c, natsName+"-1")
			if !opts.JetStream || opts.StoreDir != natsDataMount {
				t.Errorf("jetstream %v store_dir %q, want JetStream in %s", opts.JetStream, opts.StoreDir, natsDataMount)
			}
			if opts.ServerName != natsName+"-1" {
				t.Errorf("server_name %q, want the pod's name", opts.ServerName)
			}
			if opts.MaxPayload != 8<<20 {
				t.Errorf("max_payload %d, want 8 MiB", opts.MaxPayload)
			}
			ctr := container(t, sts.Spec.Template.Spec, "nats")
			for port, want := range map[int]int32{opts.Port: natsClientPort, opts.HTTPPort: natsMonitorPort} {
				if p, ok := containerPort(ctr, intstr.FromInt(port)); !ok || p != want {
					t.Errorf("the server listens on %d, the container declares %d", port, want)
				}
			}
			if servers == 1 {
				if opts.Cluster.Name != "" || len(opts.Routes) != 0 {
					t.Errorf("one server with cluster %q and routes %v", opts.Cluster.Name, opts.Routes)
				}
				return
			}
			if opts.Cluster.Name == "" || opts.Cluster.Port != natsClusterPort {
				t.Errorf("cluster %q on port %d, want a named cluster on %d", opts.Cluster.Name, opts.Cluster.Port, natsClusterPort)
			}
			if len(opts.Routes) != servers {
				t.Fatalf("%d routes, want %d", len(opts.Routes), servers)
			}
			for i, u := range opts.Routes {
				want := fmt.Sprintf("%s-%d.%s.%s.svc:%d", sts.Name, i, sts.Spec.ServiceName, namespace, natsClusterPort)
				if u.Host != want {
					t.Errorf("route %d: %s, want %s", i, u.Host, want)
				}
			}
		})
	}
}

// TestNATSServerStarts starts nats-server from the single-server
// configuration (with the store in a temporary directory and free ports)
// and checks that JetStream is on.
func TestNATSServerStarts(t *testing.T) {
	_, opts := natsConfig(t, valuesCase{name: "durable-single", files: []string{"values-durable.yaml"}, set: []string{"nats.replicas=1"}}, natsName+"-0")
	opts.StoreDir = t.TempDir()
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.HTTPHost = "127.0.0.1"
	opts.HTTPPort = -1
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready for connections")
	}
	if !s.JetStreamEnabled() {
		t.Error("JetStream is not enabled")
	}
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	if info := string(buf[:n]); !strings.HasPrefix(info, "INFO ") || !strings.Contains(info, `"jetstream":true`) ||
		!strings.Contains(info, `"max_payload":`+strconv.Itoa(8<<20)) {
		t.Errorf("server INFO %s", info)
	}
}
