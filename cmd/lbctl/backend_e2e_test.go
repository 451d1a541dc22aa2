package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/server"
)

// serve hands the admin API its *server.Server as the Runtime: it must
// edit backends too, or the backend commands answer 501.
var _ admin.BackendEditor = (*server.Server)(nil)

// kill ends the process with SIGKILL, as a crash would.
func (d *proc) kill() {
	d.t.Helper()
	d.cmd.Process.Kill()
	err := <-d.exited
	d.exited <- err // for the cleanup
}

// status reads GET /api/v1/status.
func (d *proc) status() server.Status {
	d.t.Helper()
	resp, err := http.Get("http://" + d.admin + "/api/v1/status")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st server.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		d.t.Fatal(err)
	}
	return st
}

// backend is the status of backend addr of pool web; ok false if absent.
func (d *proc) backend(addr string) (server.BackendStatus, bool) {
	d.t.Helper()
	for _, p := range d.status().Pools {
		for _, b := range p.Backends {
			if p.Name == "web" && b.Address == addr {
				return b, true
			}
		}
	}
	return server.BackendStatus{}, false
}

// TestBackendCommandsE2E drives `lbctl backend add|weight|drain --wait|
// kill|remove` against a running lbctl with a state_file, and restarts it
// (after a SIGKILL) to see the changes kept.
func TestBackendCommandsE2E(t *testing.T) {
	cfgBe := lbtest.NewTCP(t, lbtest.Echo)
	added := lbtest.NewTCP(t, lbtest.Named("added"))
	state := filepath.Join(t.TempDir(), "state.json")
	// state_file is a top-level key.
	withState := func(d *proc) { d.top = fmt.Sprintf("state_file = %q\n", state) }
	d := startProcWith(t, withState, nil, "", cfgBe.Addr)
	run := func(wantCode int, want string, args ...string) {
		t.Helper()
		out, code := runLbctl(t, append(args, "--admin", d.admin)...)
		if code != wantCode || !strings.Contains(out, want) {
			t.Fatalf("lbctl %s: exit %d, want %d with %q:\n%s", strings.Join(args, " "), code, wantCode, want, out)
		}
	}

	run(0, "pool web backend "+added.Addr+": added (weight 3, health ", "backend", "add", "web", added.Addr, "--weight", "3")
	run(1, "is already in pool web (HTTP 409)", "backend", "add", "web", cfgBe.Addr)
	run(1, "(HTTP 400)", "backend", "add", "web", "localhost:80")
	run(1, "not added through the API", "backend", "remove", "web", cfgBe.Addr)
	run(0, "weight 0 (override)", "backend", "weight", "web", cfgBe.Addr, "0")
	// Every connection now goes to the added backend.
	for range 3 {
		if got := roundTrip(t, d.front, nil); string(got) != "added" {
			t.Fatalf("answered by %q, want the added backend", got)
		}
	}

	// drain --wait: one connection held open to the added backend.
	held, err := net.Dial("tcp", d.front)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	lbtest.Eventually(t, 10*time.Second, func() bool { b, _ := d.backend(added.Addr); return b.Active == 1 }, "the held connection never became active")
	run(1, "1 connection still active after 1s", "backend", "drain", "web", added.Addr, "--wait", "--timeout", "1s")
	wait := exec.Command(lbctlBin, "backend", "drain", "web", added.Addr, "--wait", "--timeout", "1m", "--admin", d.admin)
	var out strings.Builder
	wait.Stdout, wait.Stderr = &out, &out
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	held.Close()
	if err := wait.Wait(); err != nil {
		t.Fatalf("drain --wait: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "drained, no active connection") {
		t.Fatalf("drain --wait said:\n%s", out.String())
	}

	// kill: the added backend drains, so the config backend (weight back
	// to 1) takes the next connection; kill resets it.
	run(0, "weight 1 (override removed)", "backend", "weight", "web", cfgBe.Addr, "--reset")
	c, err := net.Dial("tcp", d.front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// An echo proves the connection established end to end (counted
	// active, it may still be connecting, which a kill does not see).
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("echo before the kill: %v", err)
	}
	run(0, "killed 1 ", "backend", "kill", "web", cfgBe.Addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the kill: %v, want a reset", err)
	}

	// A crash and a restart keep the added backend (draining, weight 3)
	// and the config backend's override.
	run(0, "weight 7 (override)", "backend", "weight", "web", cfgBe.Addr, "7")
	d.kill()
	d = startProcWith(t, withState, nil, "", cfgBe.Addr)
	b, ok := d.backend(added.Addr)
	if !ok || b.Source != "api" || b.Weight != 3 || b.Admin != "draining" {
		t.Fatalf("after the restart the added backend is %+v (present %v), want api, weight 3, draining", b, ok)
	}
	b, _ = d.backend(cfgBe.Addr)
	if b.Weight != 7 || b.WeightOverride == nil || *b.WeightOverride != 7 || b.Source != "config" {
		t.Fatalf("after the restart the config backend is %+v, want weight 7 (override)", b)
	}

	// remove, and a restart forgets the backend.
	run(0, "pool web backend "+added.Addr+": removed, takes no new connections", "backend", "remove", "web", added.Addr)
	d.kill()
	d = startProcWith(t, withState, nil, "", cfgBe.Addr)
	if b, ok := d.backend(added.Addr); ok {
		t.Fatalf("a removed backend is back after a restart: %+v", b)
	}
}
