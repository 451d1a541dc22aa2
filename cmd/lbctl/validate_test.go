package main

import (
	"strings"
	"testing"
)

// TestValidateResolvesHostNames: validate resolves static backend host
// names as serve and reload do, and reports one that does not resolve like
// any other problem, with file:line and key path (exit 2). ".invalid"
// never resolves (RFC 6761); "localhost" comes from /etc/hosts.
func TestValidateResolvesHostNames(t *testing.T) {
	dir := t.TempDir()
	const head = "[listeners.a]\nbind = \"127.0.0.1:8080\"\npool = \"p\"\n"
	good := writeFile(t, dir, "good.toml", head+
		"[[pools.p.backends]]\naddress = \"localhost:9001\"\n"+
		// Sources are not contacted: neither this name nor this file need exist.
		"[[pools.p.discover]]\ntype = \"dns\"\nname = \"web.lbctl.invalid\"\nport = 80\n"+
		"[[pools.p.discover]]\ntype = \"file\"\npath = \"missing.json\"\n")
	if out, code := runLbctl(t, "validate", "--config", good); code != 0 || !strings.Contains(out, "valid (1 listener, 1 pool)") {
		t.Errorf("validate good.toml: exit %d, want 0; output:\n%s", code, out)
	}

	bad := writeFile(t, dir, "bad.toml", head+
		"[[pools.p.backends]]\naddress = \"localhost:9001\"\n"+
		"[[pools.p.backends]]\naddress = \"nothing.lbctl.invalid:9002\"\n"+
		"[[pools.q.backends]]\naddress = \"nothing.lbctl.invalid:9003\"\n")
	out, code := runLbctl(t, "validate", "--config", bad)
	if code != 2 {
		t.Fatalf("validate bad.toml: exit %d, want 2; output:\n%s", code, out)
	}
	for _, want := range []string{
		"invalid configuration (2 problems):",
		bad + `:7: pools.p.backends[1].address: cannot resolve host "nothing.lbctl.invalid": `,
		bad + `:9: pools.q.backends[0].address: cannot resolve host "nothing.lbctl.invalid": `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// serve finds the same problem at start: a bad configuration, exit 2,
	// with the same file:line in its log.
	out, code = runLbctl(t, "serve", "--config", bad)
	if code != 2 {
		t.Fatalf("serve bad.toml: exit %d, want 2; output:\n%s", code, out)
	}
	if want := `:7: pools.p.backends[1].address: cannot resolve host`; !strings.Contains(out, want) {
		t.Errorf("serve output lacks %q:\n%s", want, out)
	}
}
