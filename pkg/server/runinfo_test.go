package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestStatusProcessFields: status tells the version, start, uptime, config
// file and how the last reload went (nothing before the first one; ok; or
// failed with why), in the JSON names the admin API serves.
func TestStatusProcessFields(t *testing.T) {
	a := lbtest.NewTCP(t, tagEcho("a"))
	before := time.Now()
	h := startWith(t, listenerTOML("main", "p", "")+poolTOML("p", "", a.Addr)+noHealth, nil, Options{Version: "1.2.3-test"})
	st := h.srv.Status()
	if st.Version != "1.2.3-test" || st.ConfigFile != "test.toml" {
		t.Errorf("version %q, config_file %q", st.Version, st.ConfigFile)
	}
	if st.Started.Before(before) || st.Started.After(time.Now()) || st.UptimeSeconds < 0 || st.UptimeSeconds > time.Since(before).Seconds() {
		t.Errorf("started %v, uptime %v (test began %v)", st.Started, st.UptimeSeconds, before)
	}
	if st.LastReload != nil {
		t.Errorf("last_reload before any reload: %+v", st.LastReload)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	for _, k := range []string{"version", "started", "uptime_seconds", "config_file", "last_reload", "listeners", "pools"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, raw)
		}
	}

	// A reload that cannot bind: failed, with the error.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bad, err := config.Parse("test.toml", []byte(listenerTOML("main", "p", "")+poolTOML("p", "", a.Addr)+noHealth+
		fmt.Sprintf("[listeners.new]\nbind = %q\npool = \"p\"\n", busy.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := h.srv.Reload(bad); err == nil {
		t.Fatal("reload onto a busy port succeeded")
	}
	lr := h.srv.Status().LastReload
	if lr == nil || lr.Result != "failed" || !strings.Contains(lr.Error, "listener new") || lr.Time.Before(at) {
		t.Fatalf("last_reload after a failed reload: %+v", lr)
	}

	// A good one: ok, no error.
	good, err := config.Parse("test.toml", []byte(listenerTOML("main", "p", "")+poolTOML("p", "", a.Addr)+noHealth))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Reload(good); err != nil {
		t.Fatal(err)
	}
	lr = h.srv.Status().LastReload
	if lr == nil || lr.Result != "ok" || lr.Error != "" {
		t.Fatalf("last_reload after a good reload: %+v", lr)
	}

	// A file that did not even load (the daemon reports it).
	h.srv.ReloadRejected(errors.New("test.toml:3: pools.p.algorithm: bad"))
	lr = h.srv.Status().LastReload
	if lr == nil || lr.Result != "failed" || lr.Error != "test.toml:3: pools.p.algorithm: bad" {
		t.Fatalf("last_reload after a rejected file: %+v", lr)
	}
}
