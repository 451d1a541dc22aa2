package server

// statefile.go: the state file (top-level `state_file` key), which keeps
// what an operator changed at run time across restarts: admin states,
// weight overrides and the backends added through the API. The server
// reads it once at start (LoadState) and writes it after every such change
// (SaveState). The file is a versioned JSON document:
//
//	{
//	  "version": 1,
//	  "pools": {
//	    "web": {
//	      "admin": {"10.0.0.11:80": "draining"},
//	      "weight_overrides": {"10.0.0.12:80": 5},
//	      "backends": [{"address": "10.0.0.20:80", "weight": 1, "backup": false}]
//	    }
//	  }
//	}
//
// A write never leaves a torn file: the document goes to a temporary file
// in the same directory, which is synced and renamed over the old one, and
// the directory is synced so the rename survives a power cut. A crash
// leaves either the old file or the new one (and perhaps a temporary file,
// removed at the next load). A file that cannot be used is moved aside to
// PATH.bad and start goes on with an empty state: losing drain states is
// better than a balancer that does not start.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/lbctl/lbctl/balancer"
	"go.uber.org/zap"
)

// StateVersion is the version of the state file's format that SaveState
// writes and LoadState reads. A file of another version is treated as
// corrupt.
const StateVersion = 1

// State is what the state file keeps, by pool name. A pool or backend the
// configuration no longer has is the loader's to ignore.
type State struct {
	Pools map[string]PoolState
}

// PoolState is one pool's part of the State, keyed by backend address.
type PoolState struct {
	// Admin holds the backends whose admin state is not enabled; a backend
	// absent from it is enabled.
	Admin map[string]balancer.AdminState
	// WeightOverrides holds the weights set with SetWeightOverride.
	WeightOverrides map[string]int
	// Backends are the backends added through the API (source "api"), in
	// the order they were added.
	Backends []BackendSpec
}

// stateDoc is the file's JSON document.
type stateDoc struct {
	Version int                     `json:"version"`
	Pools   map[string]poolStateDoc `json:"pools"`
}

type poolStateDoc struct {
	Admin           map[string]balancer.AdminState `json:"admin,omitempty"`
	WeightOverrides map[string]int                 `json:"weight_overrides,omitempty"`
	Backends        []backendDoc                   `json:"backends,omitempty"`
}

type backendDoc struct {
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	Backup  bool   `json:"backup"`
}

// errCorruptState marks a state file that was read but cannot be used.
var errCorruptState = errors.New("corrupt state file")

// SaveState writes st to path atomically, with mode 0600: readers see the
// old file or the new one, never a part of it, even if the process or the
// machine dies during the write.
func SaveState(path string, st State) error {
	data, err := encodeState(st)
	if err != nil {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	if err := writeAtomic(path, data); err != nil {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	return nil
}

// LoadState reads the state file at path. A missing file is an empty
// state. A file that cannot be used (not JSON, another version, a bad
// entry) is logged, moved aside to PATH.bad (replacing an older one) and
// read as an empty state, so start goes on. The error is for a file that
// exists but cannot be read (permissions, a directory).
//
// Temporary files left by a SaveState that died are removed.
func LoadState(path string, log *zap.Logger) (State, error) {
	if log == nil {
		log = zap.NewNop()
	}
	removeStaleTemps(path, log)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{Pools: map[string]PoolState{}}, nil
	}
	if err != nil {
		return State{Pools: map[string]PoolState{}}, fmt.Errorf("state file: %w", err)
	}
	st, err := decodeState(data)
	if err == nil {
		return st, nil
	}
	bad := path + ".bad"
	if rerr := os.Rename(path, bad); rerr != nil {
		log.Error("state file unusable and cannot be moved aside; starting without saved state",
			zap.String("path", path), zap.NamedError("problem", err), zap.Error(rerr))
	} else {
		log.Error("state file unusable, moved aside; starting without saved state",
			zap.String("path", path), zap.String("moved_to", bad), zap.NamedError("problem", err))
	}
	return State{Pools: map[string]PoolState{}}, nil
}

func encodeState(st State) ([]byte, error) {
	doc := stateDoc{Version: StateVersion, Pools: map[string]poolStateDoc{}}
	for name, p := range st.Pools {
		if err := checkPoolState(p); err != nil {
			return nil, fmt.Errorf("pool %s: %w", name, err)
		}
		pd := poolStateDoc{Admin: p.Admin, WeightOverrides: p.WeightOverrides}
		for _, b := range p.Backends {
			pd.Backends = append(pd.Backends, backendDoc(b))
		}
		doc.Pools[name] = pd
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

func decodeState(data []byte) (State, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc stateDoc
	if err := dec.Decode(&doc); err != nil {
		return State{}, fmt.Errorf("%w: %w", errCorruptState, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return State{}, fmt.Errorf("%w: data after the JSON document", errCorruptState)
	}
	if doc.Version != StateVersion {
		return State{}, fmt.Errorf("%w: version %d, want %d", errCorruptState, doc.Version, StateVersion)
	}
	st := State{Pools: make(map[string]PoolState, len(doc.Pools))}
	for name, pd := range doc.Pools {
		p := PoolState{Admin: pd.Admin, WeightOverrides: pd.WeightOverrides}
		for _, b := range pd.Backends {
			p.Backends = append(p.Backends, BackendSpec(b))
		}
		if err := checkPoolState(p); err != nil {
			return State{}, fmt.Errorf("%w: pool %s: %w", errCorruptState, name, err)
		}
		st.Pools[name] = p
	}
	return st, nil
}

// checkPoolState checks what the server would refuse at run time: weights
// out of 0..MaxWeight, an added backend that is not IP:port or is there
// twice, an admin state that has no name.
func checkPoolState(p PoolState) error {
	for addr, s := range p.Admin {
		if addr == "" {
			return errors.New("admin state of an empty address")
		}
		if _, err := s.MarshalText(); err != nil {
			return fmt.Errorf("backend %s: %w", addr, err)
		}
	}
	for addr, w := range p.WeightOverrides {
		if addr == "" {
			return errors.New("weight override of an empty address")
		}
		if w < 0 || w > balancer.MaxWeight {
			return fmt.Errorf("backend %s: weight override %d out of 0..%d", addr, w, balancer.MaxWeight)
		}
	}
	seen := make(map[netip.AddrPort]bool, len(p.Backends))
	for _, b := range p.Backends {
		ap, err := netip.ParseAddrPort(b.Address)
		if err != nil {
			return fmt.Errorf("added backend %q: %w", b.Address, err)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if seen[ap] {
			return fmt.Errorf("added backend %s listed twice", b.Address)
		}
		seen[ap] = true
		if b.Weight < 0 || b.Weight > balancer.MaxWeight {
			return fmt.Errorf("added backend %s: weight %d out of 0..%d", b.Address, b.Weight, balancer.MaxWeight)
		}
	}
	return nil
}

// tempPrefix starts the names of SaveState's temporary files beside path.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// writeAtomic replaces path with data: a temporary file in the same
// directory (so the rename stays within one file system), synced, renamed
// over path, then the directory synced so the new name is durable.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return err
	}
	if err := writeSynced(f, data); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// writeSynced writes data to the new file f, mode 0600, syncs and closes it.
func writeSynced(f *os.File, data []byte) error {
	err := f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeStaleTemps removes the temporary files a SaveState that died left
// beside path.
func removeStaleTemps(path string, log *zap.Logger) {
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return
	}
	prefix := tempPrefix(path)
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		p := filepath.Join(filepath.Dir(path), e.Name())
		if err := os.Remove(p); err == nil {
			log.Info("removed a temporary state file left by an interrupted write", zap.String("path", p))
		}
	}
}
