package config_test

import (
	"flag"
	"fmt"

	"github.com/openfaas/mailbox/internal/config"
)

func ExampleLoad() {
	environ := []string{"PATH=/bin", "max_inflight=4", "default_delay=90", "gateway_url=http://gw:8080/"}

	c, err := config.Load(config.Environ(environ), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.MaxInflight, c.DefaultDelay, c.GatewayURL, c.MaxDelay)

	_, err = config.Load(config.Environ([]string{"max_inflight=abc", "basic_auth=yes"}), nil)
	fmt.Println(err)
	// Output:
	// 4 1m30s http://gw:8080 168h0m0s
	// config: basic_auth: "yes" is not a boolean (true, false, 1 or 0)
	// config: max_inflight: "abc" is not an integer
}

func ExampleFlags() {
	// The standalone binary: its own defaults, then environment, then flags.
	fs := flag.NewFlagSet("mailbox", flag.ContinueOnError)
	lookup := config.Flags(fs, config.Environ([]string{"gateway_url=http://env:8080", "max_inflight=8"}))
	if err := fs.Parse([]string{"--max-inflight=2", "--basic-auth"}); err != nil {
		fmt.Println(err)
		return
	}

	c, err := config.Load(lookup, map[string]string{"gateway_url": "http://127.0.0.1:8080", "nats_url": ""})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s %q %d %t\n", c.GatewayURL, c.NATSURL, c.MaxInflight, c.BasicAuth)
	// Output:
	// http://env:8080 "" 2 true
}

func ExampleParseSeconds() {
	for _, s := range []string{"60", "1500ms", "-5"} {
		d, err := config.ParseSeconds(s)
		fmt.Println(d, err)
	}
	// Output:
	// 1m0s <nil>
	// 1.5s <nil>
	// 0s "-5" is negative
}
