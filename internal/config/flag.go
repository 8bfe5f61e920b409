package config

import (
	"flag"
	"strings"
)

// Flags registers one flag per setting on fs, named with dashes
// (--gateway-url), with the setting's usage and "(env gateway_url)"
// appended. Bool settings may be given without a value (--basic-auth).
//
// The returned lookup, meant for Load once fs has been parsed, prefers a
// flag set on the command line and falls back to env (which may be nil).
// A flag that was not given, or was given an empty value (except
// --nats-url=, which asks for an embedded server), does not hide env.
// Flag values are not checked by fs.Parse: Load validates them like any
// other value, so errors name the setting the same way.
//
// Flags show no default in -help: the caller's defaults may differ from the
// built-in ones, and Settings documents both.
func Flags(fs *flag.FlagSet, env func(string) (string, bool)) func(string) (string, bool) {
	byFlag := make(map[string]Setting)
	for _, s := range settings() {
		byFlag[s.FlagName()] = s
		fs.Var(&flagValue{isBool: s.isBool}, s.FlagName(), s.Usage+" (env "+s.Name+")")
	}
	return func(name string) (string, bool) {
		var (
			value string
			set   bool
		)
		fs.Visit(func(f *flag.Flag) {
			s, ok := byFlag[f.Name]
			if !ok || s.Name != name {
				return
			}
			if v, ok := s.lookup(func(string) (string, bool) { return f.Value.String(), true }); ok {
				value, set = v, true
			}
		})
		if set {
			return value, true
		}
		if env == nil {
			return "", false
		}
		return env(name)
	}
}

// flagValue holds a flag's text as given; Load parses it.
type flagValue struct {
	value  string
	isBool bool
}

func (v *flagValue) String() string {
	if v == nil {
		return ""
	}
	return v.value
}

func (v *flagValue) Set(s string) error {
	v.value = strings.TrimSpace(s)
	return nil
}

// IsBoolFlag lets bool settings be given as a bare --name.
func (v *flagValue) IsBoolFlag() bool { return v.isBool }
