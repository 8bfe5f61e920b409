package config

import (
	"fmt"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		in      string
		want    Rate
		wantErr bool
	}{
		{in: "10/s", want: Rate{10, time.Second}},
		{in: "600/m", want: Rate{600, time.Minute}},
		{in: "1/h", want: Rate{1, time.Hour}},
		{in: " 50/s\n", want: Rate{50, time.Second}},
		{in: "007/s", want: Rate{7, time.Second}},
		{in: "", wantErr: true},
		{in: "10", wantErr: true},
		{in: "10/d", wantErr: true},
		{in: "10/S", wantErr: true},
		{in: "10/sec", wantErr: true},
		{in: "0/s", wantErr: true},
		{in: "-1/s", wantErr: true},
		{in: "+1/s", wantErr: true},
		{in: "/s", wantErr: true},
		{in: "1.5/s", wantErr: true},
		{in: "10/s/m", wantErr: true},
		{in: "99999999999999999999/s", wantErr: true},
	} {
		got, err := ParseRate(tc.in)
		if tc.wantErr {
			want := fmt.Sprintf("%q is not a rate: N/s, N/m or N/h with N an integer of at least 1 (e.g. 10/s, 600/m)", tc.in)
			if errString(err) != want {
				t.Errorf("ParseRate(%q) error = %s, want %s", tc.in, errString(err), want)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		// String writes what ParseRate reads.
		if back, err := ParseRate(got.String()); err != nil || back != got {
			t.Errorf("ParseRate(%q.String() = %q) = %v, %v", tc.in, got.String(), back, err)
		}
	}
	if s := (Rate{}).String(); s != "0" {
		t.Errorf("Rate{}.String() = %q, want 0", s)
	}
}

func TestRatePerSecond(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
	}{{"50/s", 50}, {"600/m", 10}, {"36/h", 0.01}} {
		r, err := ParseRate(c.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.PerSecond(); got != c.want {
			t.Errorf("%s: PerSecond() = %v, want %v", c.in, got, c.want)
		}
	}
	if got := (Rate{}).PerSecond(); got != 0 {
		t.Errorf("zero Rate: PerSecond() = %v", got)
	}
}
