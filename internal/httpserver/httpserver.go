// Package httpserver is the one way the mailbox makes an *http.Server.
// Every server it runs (the API of the standalone server, the connector's
// /healthz and /metrics) bounds how long a client may take to send a
// request, how long the answer may take, how long an idle connection is
// kept and how large the request's headers may be: without those bounds a
// client that sends its body one byte at a time, or never reads the
// answer, holds a connection and a goroutine for as long as it likes.
// (The function template, its own module, has its own copy.)
package httpserver

import (
	"net/http"
	"time"
)

// The defaults of Options.
const (
	// DefaultReadTimeout is of-watchdog's read_timeout default.
	DefaultReadTimeout = 10 * time.Second
	// DefaultWriteTimeout leaves the handler time to store a message
	// (the broker's acknowledgement is awaited up to 5 s) after a body
	// that took the whole DefaultReadTimeout to arrive.
	DefaultWriteTimeout = 15 * time.Second
	// DefaultIdleTimeout is longer than Prometheus's default scrape
	// interval (1 min), so a scraper keeps its connection.
	DefaultIdleTimeout = 90 * time.Second
	// DefaultReadHeaderTimeout bounds the headers alone.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultMaxHeaderBytes is the largest request header block: far
	// above what a requeue carries, far below net/http's 1 MiB. Larger
	// headers are answered 431.
	DefaultMaxHeaderBytes = 64 << 10
)

// Options bounds what one client may take of a server. A zero field
// takes its default.
type Options struct {
	// ReadTimeout bounds reading one request, headers and body, from its
	// first byte. Defaults to DefaultReadTimeout.
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of a request's headers
	// to the end of its answer: reading the body, the handler and
	// writing the answer. Defaults to DefaultWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout is how long a kept-alive connection may wait for its
	// next request. Defaults to DefaultIdleTimeout.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds reading the headers. Defaults to
	// DefaultReadHeaderTimeout, or ReadTimeout when that is shorter.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds the request's headers (net/http allows 4 KiB
	// over it). Defaults to DefaultMaxHeaderBytes.
	MaxHeaderBytes int
}

// New returns a server for h with o's bounds, its defaults where o leaves
// them zero.
func New(h http.Handler, o Options) *http.Server {
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = min(DefaultReadHeaderTimeout, o.ReadTimeout)
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return &http.Server{
		Handler:           h,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
	}
}
