package server

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/lbctl/lbctl/balancer"
)

// TestStateFileKeepsRuntimeChanges: admin states, weight overrides and
// API-added backends survive a restart with state_file; the state of a
// discovered backend waits for its source to deliver it.
func TestStateFileKeepsRuntimeChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	a, b, c := "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"
	toml := "state_file = \"" + path + "\"\n" + listenerTOML("l", "p", "") + discoverTOML("p", "") +
		"[[pools.p.backends]]\naddress = \"" + a + "\"\n"

	h, fs := startLive(t, toml, nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, c)
	if _, err := h.srv.SetBackendAdmin("p", a, balancer.Draining); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.AddBackend("p", BackendSpec{Address: b, Weight: 1, Backup: true}); err != nil {
		t.Fatal(err)
	}
	five, two := 5, 2
	if _, err := h.srv.SetWeightOverride("p", b, &five); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.SetWeightOverride("p", c, &two); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.SetBackendAdmin("p", c, balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	h.srv.Shutdown(context.Background())

	h2, fs2 := startLive(t, toml, nil)
	st, ok := backendOf(h2, "p", a)
	if !ok || st.Admin != "draining" || st.Source != "config" {
		t.Errorf("a after restart: %+v %v", st, ok)
	}
	st, ok = backendOf(h2, "p", b)
	if !ok || st.Source != "api" || !st.Backup || st.Weight != 5 || st.WeightOverride == nil || *st.WeightOverride != 5 {
		t.Errorf("b after restart: %+v %v", st, ok)
	}
	if _, ok := backendOf(h2, "p", c); ok {
		t.Errorf("c in the pool before its source delivered it")
	}
	fs2.get(t, "file:/fake/p.json").pushAddrs(t, c)
	st, ok = backendOf(h2, "p", c)
	if !ok || st.Admin != "disabled" || st.Weight != 2 {
		t.Errorf("c once delivered after restart: %+v %v", st, ok)
	}
	// What is saved now is what was saved before.
	saved, err := LoadState(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ps := saved.Pools["p"]
	if ps.Admin[a] != balancer.Draining || ps.Admin[c] != balancer.Disabled || ps.WeightOverrides[b] != 5 ||
		ps.WeightOverrides[c] != 2 || len(ps.Backends) != 1 || ps.Backends[0].Address != b {
		t.Errorf("saved state %+v", ps)
	}
	// Removing the API backend and resetting overrides is saved too.
	if _, err := h2.srv.RemoveBackend("p", b); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.srv.SetWeightOverride("p", c, nil); err != nil {
		t.Fatal(err)
	}
	saved, err = LoadState(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ps := saved.Pools["p"]; len(ps.Backends) != 0 || len(ps.WeightOverrides) != 0 || len(ps.Admin) != 2 {
		t.Errorf("saved state after remove and reset %+v", ps)
	}
}
