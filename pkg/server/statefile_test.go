package server

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// sampleState has a bit of everything: two pools, each admin state, an
// override of 0, IPv4 and IPv6 added backends, a backup.
func sampleState() State {
	return State{Pools: map[string]PoolState{
		"web": {
			Admin:           map[string]balancer.AdminState{"10.0.0.11:80": balancer.Draining, "[2001:db8::12]:80": balancer.Disabled},
			WeightOverrides: map[string]int{"10.0.0.11:80": 0, "10.0.0.20:80": 1_000_000},
			Backends: []BackendSpec{
				{Address: "10.0.0.20:80", Weight: 1},
				{Address: "[2001:db8::21]:8080", Weight: 7, Backup: true},
			},
		},
		"dns": {Admin: map[string]balancer.AdminState{"10.0.1.1:53": balancer.Draining}},
	}}
}

// stateFiles lists the names in dir.
func stateFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestStateRoundTrip: what SaveState writes, LoadState reads back the same;
// the file is mode 0600, versioned JSON, and no temporary file stays.
func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	want := sampleState()
	if err := SaveState(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded %+v\nwant %+v", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if names := stateFiles(t, dir); !reflect.DeepEqual(names, []string{"state.json"}) {
		t.Errorf("files in the directory: %v, want only state.json", names)
	}

	// The format: version 1, admin states by name.
	data, _ := os.ReadFile(path)
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["version"] != 1.0 {
		t.Errorf("version %v, want 1", raw["version"])
	}
	for _, want := range []string{`"10.0.0.11:80": "draining"`, `"weight_overrides"`, `"address": "10.0.0.20:80"`, `"backup": true`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the document lacks %s:\n%s", want, data)
		}
	}

	// Overwriting: the new state replaces the old one.
	want2 := State{Pools: map[string]PoolState{"web": {WeightOverrides: map[string]int{"10.0.0.11:80": 3}}}}
	if err := SaveState(path, want2); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadState(path, zap.NewNop()); err != nil || !reflect.DeepEqual(got, want2) {
		t.Fatalf("after overwrite: %+v %v, want %+v", got, err, want2)
	}

	// An empty state round-trips to an empty (non-nil) map.
	if err := SaveState(path, State{}); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadState(path, zap.NewNop()); err != nil || got.Pools == nil || len(got.Pools) != 0 {
		t.Fatalf("empty state loaded as %+v %v", got, err)
	}
}

// TestStateMissingFile: no file is an empty state, and nothing is created.
func TestStateMissingFile(t *testing.T) {
	dir := t.TempDir()
	st, err := LoadState(filepath.Join(dir, "state.json"), zap.NewNop())
	if err != nil || st.Pools == nil || len(st.Pools) != 0 {
		t.Fatalf("missing file: %+v %v, want an empty state", st, err)
	}
	if names := stateFiles(t, dir); len(names) != 0 {
		t.Fatalf("LoadState created %v", names)
	}
}

// TestStateCorrupt: a file that cannot be used is moved aside to .bad
// (replacing an older one), logged once at error, and read as an empty
// state without an error, so start goes on.
func TestStateCorrupt(t *testing.T) {
	good := `{"version": 1, "pools": {"web": {"admin": {"10.0.0.1:80": "draining"}}}}`
	for _, tc := range []struct{ name, content, problem string }{
		{"empty file", "", "EOF"},
		{"not JSON", "drained: 10.0.0.1:80\n", "invalid character"},
		{"truncated", good[:len(good)/2], "unexpected EOF"},
		{"unknown version", `{"version": 2, "pools": {}}`, "version 2, want 1"},
		{"no version", `{"pools": {}}`, "version 0, want 1"},
		{"unknown field", `{"version": 1, "pools": {}, "extra": true}`, `unknown field "extra"`},
		{"unknown admin state", `{"version": 1, "pools": {"web": {"admin": {"10.0.0.1:80": "paused"}}}}`, "unknown admin state"},
		{"weight override out of range", `{"version": 1, "pools": {"web": {"weight_overrides": {"10.0.0.1:80": 1000001}}}}`, "out of 0..1000000"},
		{"negative weight", `{"version": 1, "pools": {"web": {"backends": [{"address": "10.0.0.1:80", "weight": -1}]}}}`, "weight -1"},
		{"added backend by host name", `{"version": 1, "pools": {"web": {"backends": [{"address": "web1:80", "weight": 1}]}}}`, "web1:80"},
		{"added backend twice", `{"version": 1, "pools": {"web": {"backends": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.1:80"}]}}}`, "listed twice"},
		{"data after the document", good + "\n{}", "data after the JSON document"},
		{"not an object", `[1, 2]`, "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path+".bad", []byte("an older bad file"), 0o600); err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			st, err := LoadState(path, zap.New(core))
			if err != nil || st.Pools == nil || len(st.Pools) != 0 {
				t.Fatalf("LoadState: %+v %v, want an empty state and no error", st, err)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("the corrupt file is still at %s (%v)", path, err)
			}
			if bad, err := os.ReadFile(path + ".bad"); err != nil || string(bad) != tc.content {
				t.Errorf(".bad holds %q (%v), want the corrupt file's %q", bad, err, tc.content)
			}
			entries := logs.All()
			if len(entries) != 1 || entries[0].Level != zapcore.ErrorLevel {
				t.Fatalf("logs %v, want one error", entries)
			}
			fields := entries[0].ContextMap()
			if fields["path"] != path || fields["moved_to"] != path+".bad" ||
				!strings.Contains(fmt.Sprint(fields["problem"]), tc.problem) {
				t.Errorf("log fields %v, want path, moved_to and a problem containing %q", fields, tc.problem)
			}
			// The next save starts afresh.
			if err := SaveState(path, sampleState()); err != nil {
				t.Fatal(err)
			}
			if st, err := LoadState(path, zap.NewNop()); err != nil || !reflect.DeepEqual(st, sampleState()) {
				t.Fatalf("after a save: %+v %v", st, err)
			}
		})
	}
}

// TestStateUnreadable: a state file that exists but cannot be read is an
// error (the caller decides), and it is not moved aside.
func TestStateUnreadable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadState(path, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "state file") {
		t.Fatalf("LoadState of a directory: %v, want an error", err)
	}
	if _, err := os.Stat(path + ".bad"); !os.IsNotExist(err) {
		t.Fatalf("moved aside: %v", err)
	}
}

// TestStateSaveFailures: a state the server would refuse is not written,
// and a write that fails leaves the old file and no temporary file.
func TestStateSaveFailures(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := SaveState(path, sampleState()); err != nil {
		t.Fatal(err)
	}
	for _, st := range []State{
		{Pools: map[string]PoolState{"web": {WeightOverrides: map[string]int{"10.0.0.1:80": -1}}}},
		{Pools: map[string]PoolState{"web": {Admin: map[string]balancer.AdminState{"10.0.0.1:80": 7}}}},
		{Pools: map[string]PoolState{"web": {Backends: []BackendSpec{{Address: "localhost:80", Weight: 1}}}}},
	} {
		if err := SaveState(path, st); err == nil {
			t.Errorf("SaveState(%+v) succeeded", st)
		}
	}
	if got, err := LoadState(path, zap.NewNop()); err != nil || !reflect.DeepEqual(got, sampleState()) {
		t.Fatalf("after refused saves: %+v %v, want the old state", got, err)
	}

	// A directory that does not exist.
	if err := SaveState(filepath.Join(dir, "none", "state.json"), sampleState()); err == nil {
		t.Error("SaveState into a missing directory succeeded")
	}
	// The rename fails (a directory is in the way): the temporary file goes.
	blocked := filepath.Join(dir, "blocked")
	if err := os.MkdirAll(filepath.Join(blocked, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := SaveState(blocked, sampleState()); err == nil {
		t.Error("SaveState over a directory succeeded")
	}
	if names := stateFiles(t, dir); !reflect.DeepEqual(names, []string{"blocked", "state.json"}) {
		t.Fatalf("files after failed saves: %v, want blocked and state.json", names)
	}
}

// stateCrashChildEnv names the state file the crash test's child writes.
const stateCrashChildEnv = "LBCTL_STATE_CRASH_CHILD"

// crashStates are the two states the child writes in turn: large enough
// (about 100 KiB) that a kill often lands inside a write.
func crashStates() [2]State {
	var out [2]State
	for i := range out {
		p := PoolState{Admin: map[string]balancer.AdminState{}, WeightOverrides: map[string]int{}}
		for j := range 2000 {
			addr := fmt.Sprintf("10.%d.%d.%d:80", i, j/256, j%256)
			p.Admin[addr] = balancer.Draining
			p.WeightOverrides[addr] = i*1000 + j
			p.Backends = append(p.Backends, BackendSpec{Address: addr, Weight: j})
		}
		out[i] = State{Pools: map[string]PoolState{"web": p}}
	}
	return out
}

// TestStateCrashMidWrite kills a process that saves two states in turn,
// at random moments, many times: the file is always one of the two states,
// never torn, and the next load removes the temporary file left behind.
func TestStateCrashMidWrite(t *testing.T) {
	states := crashStates()
	if path := os.Getenv(stateCrashChildEnv); path != "" {
		go func() { // the parent closes stdin when it is done with us
			io.Copy(io.Discard, os.Stdin)
			os.Exit(0)
		}()
		// Encoded once, so that nearly all the loop's time is spent in
		// the write itself, where a kill is interesting.
		var docs [2][]byte
		for i, st := range states {
			var err error
			if docs[i], err = encodeState(st); err != nil {
				ChildFatal(err)
			}
		}
		for i := 0; ; i++ {
			if err := writeAtomic(path, docs[i%2]); err != nil {
				ChildFatal(err)
			}
			if i == 1 {
				fmt.Println("saving")
			}
		}
	}
	if testing.Short() {
		t.Skip("starts a dozen processes")
	}
	path := filepath.Join(t.TempDir(), "state.json")
	const rounds = 12
	leftovers := 0
	for round := range rounds {
		child := StartChild(t, "^TestStateCrashMidWrite$", stateCrashChildEnv+"="+path)
		child.WaitLine("saving")
		// Jitter, not synchronisation: the kill lands anywhere in the loop.
		time.Sleep(time.Duration(rand.IntN(20_000)) * time.Microsecond)
		if err := syscall.Kill(child.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for range child.out { // closed once the child is gone
		}
		if len(stateFiles(t, filepath.Dir(path))) > 1 {
			leftovers++
		}
		core, logs := observer.New(zapcore.ErrorLevel)
		got, err := LoadState(path, zap.New(core))
		if err != nil || logs.Len() != 0 {
			t.Fatalf("round %d: LoadState %v, logs %v", round, err, logs.All())
		}
		if !reflect.DeepEqual(got, states[0]) && !reflect.DeepEqual(got, states[1]) {
			t.Fatalf("round %d: the file is neither state", round)
		}
		if names := stateFiles(t, filepath.Dir(path)); !reflect.DeepEqual(names, []string{"state.json"}) {
			t.Fatalf("round %d: after a load the directory holds %v", round, names)
		}
	}
	// Most of the child's loop is the write: with no kill inside one, the
	// test proved nothing.
	if leftovers == 0 {
		t.Fatalf("none of %d kills landed inside a write", rounds)
	}
	t.Logf("%d of %d kills landed inside a write (left a temporary file)", leftovers, rounds)
}
