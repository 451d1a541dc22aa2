package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must never panic; an error
// must be a non-empty Errors naming the file; a success must hold the
// promises of the Config type.
//
//	go test -run '^$' -fuzz FuzzParse ./pkg/config
func FuzzParse(f *testing.F) {
	examples, _ := filepath.Glob("../../examples/*.toml")
	for _, e := range examples {
		if data, err := os.ReadFile(e); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		indexLines(data) // must terminate on any input, valid TOML or not
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty Errors: %#v", err)
			}
			for _, e := range errs {
				if e.File != "fuzz.toml" || e.Msg == "" || e.Line < 0 {
					t.Fatalf("badly formed error %+v", *e)
				}
			}
			return
		}
		if len(cfg.Listeners) == 0 {
			t.Fatal("valid config without listeners")
		}
		for _, l := range cfg.Listeners {
			if _, ok := cfg.Pools[l.Pool]; !ok && (l.Pool != "" || len(l.Routes) == 0) {
				t.Fatalf("listener %q names missing pool %q", l.Name, l.Pool)
			}
			for _, r := range l.Routes {
				if _, ok := cfg.Pools[r.Pool]; !ok || l.Protocol != "tcp" || l.TLSInspectTimeout <= 0 ||
					len(r.SNI) == 0 && r.SNIRegex == nil {
					t.Fatalf("listener %q: route breaks an invariant: %+v", l.Name, r)
				}
			}
			// Port 0 (any free port) is a valid bind.
			if _, err := netip.ParseAddrPort(l.Bind); err != nil {
				t.Fatalf("listener %q has bad bind %q", l.Name, l.Bind)
			}
			if l.Protocol != "tcp" && l.Protocol != "udp" {
				t.Fatalf("listener %q has protocol %q", l.Name, l.Protocol)
			}
		}
		for name, p := range cfg.Pools {
			if len(p.Backends)+len(p.Discover) == 0 || p.Health.Rise < 1 || p.Health.Fall < 1 || p.Health.Interval <= 0 || p.DrainTimeout < 0 {
				t.Fatalf("pool %q breaks an invariant: %+v", name, *p)
			}
			seen := map[string]bool{}
			for _, d := range p.Discover {
				ok := d.Line > 0 && !seen[d.Source()]
				switch d.Type {
				case "dns":
					ok = ok && d.Name != "" && d.Port >= 1 && d.Port <= 65535 && d.Weight >= 0 && d.Weight <= MaxDiscoverWeight && d.Interval > 0
				case "srv":
					ok = ok && d.Name != "" && d.Interval > 0
				case "file":
					ok = ok && d.Path != ""
				case "etcd":
					ok = ok && len(d.Endpoints) > 0 && d.Prefix != ""
				default:
					ok = false
				}
				if d.Resolver != "" {
					_, err := netip.ParseAddrPort(d.Resolver)
					ok = ok && err == nil
				}
				if !ok {
					t.Fatalf("pool %q: discover entry breaks an invariant: %+v", name, d)
				}
				seen[d.Source()] = true
			}
		}
	})
}
