// Package jsserver runs an embedded NATS server with JetStream on a file
// store, alone or as one member of a cluster, for the standalone mailbox
// and for tests.
package jsserver

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure the embedded server.
type Options struct {
	// Dir holds the JetStream store. Required.
	Dir string
	// Host to listen on. Defaults to 127.0.0.1.
	Host string
	// Port for clients; -1 picks a free port. Defaults to -1.
	Port int
	// MaxPayload is the largest NATS message. Defaults to 8 MiB so that a
	// 1 MiB body plus envelope and headers always fits.
	MaxPayload int32
	// Name of the server, unique in a cluster. Defaults to mailbox.
	Name string
	// Cluster, when its Name is set, makes the server a cluster member.
	Cluster Cluster
}

// Cluster is a server's place in a JetStream cluster.
type Cluster struct {
	Name string
	// Port for routes between servers.
	Port int
	// Routes are the other members' route URLs, nats://host:port.
	Routes []string
}

// Server is a running embedded server.
type Server struct{ ns *server.Server }

// Start runs the server and returns once it accepts clients.
func Start(o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("jsserver: Dir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 8 << 20
	}
	if o.Name == "" {
		o.Name = "mailbox"
	}
	opts := &server.Options{
		ServerName: o.Name,
		Host:       o.Host,
		Port:       o.Port,
		MaxPayload: o.MaxPayload,
		JetStream:  true,
		StoreDir:   o.Dir,
		NoLog:      true,
		NoSigs:     true,
	}
	if o.Cluster.Name != "" {
		opts.Cluster = server.ClusterOpts{Name: o.Cluster.Name, Host: o.Host, Port: o.Cluster.Port}
		for _, r := range o.Cluster.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("jsserver: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("jsserver: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("jsserver: not ready for connections after 10s")
	}
	return &Server{ns: ns}, nil
}

// URL is the nats:// address clients connect to.
func (s *Server) URL() string { return s.ns.ClientURL() }

// Shutdown stops the server; the store keeps every message.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}
