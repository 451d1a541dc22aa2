package server

// upgrade.go: the server's side of lbctl upgrade that is not a connection:
// the listening sockets (ListenerFiles, passed to the new process, which
// serves them as Options.Inherited), the accept loops (StopAccepting once
// the new process accepts on the same sockets; ResumeAccepting when the
// handover failed), and the run-time state (HandoverState, read by the new
// process as Options.Handover).
//
// The state is the state file's (statefile.go: admin states, weight
// overrides, API backends) plus the backends whose last active check said
// down: the new process starts those down, so it sends them nothing
// before its own first check says otherwise. Passive ejections and
// slow-start ramps are not carried: they are short, and a backend that
// still fails is ejected again.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// ListenerFile is a duplicate of one listening socket and its key.
type ListenerFile struct {
	Key  SocketKey
	File *os.File
}

// ListenerFiles returns a duplicate of every bound listening socket, TCP
// and UDP, keyed by its bound address (a listener that binds port 0 is
// keyed by the port it got, which a new process binding port 0 again does
// not match). The caller closes the files. The server keeps serving.
func (s *Server) ListenerFiles() ([]ListenerFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ListenerFile
	fail := func(err error) ([]ListenerFile, error) {
		for _, lf := range out {
			lf.File.Close()
		}
		return nil, err
	}
	for _, l := range s.listeners {
		var (
			f   *os.File
			ap  netip.AddrPort
			err error
		)
		if l.udp != nil {
			ap = l.udp.LocalAddr().(*net.UDPAddr).AddrPort()
			f, err = l.udp.File()
		} else {
			ap = l.tcp.Addr().(*net.TCPAddr).AddrPort()
			f, err = l.tcp.File()
		}
		k := NewSocketKey(l.protocol, ap)
		if err != nil {
			return fail(fmt.Errorf("duplicate listening socket %s: %w", k, err))
		}
		out = append(out, ListenerFile{Key: k, File: f})
	}
	slices.SortFunc(out, func(a, b ListenerFile) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	return out, nil
}

// stopAcceptingWait bounds how long StopAccepting waits for an accept loop
// to notice.
const stopAcceptingWait = 5 * time.Second

// StopAccepting stops every TCP accept loop without closing its socket:
// connections that arrive wait in the socket's queue for the new process,
// which accepts on the same socket. It returns once every loop has
// stopped. UDP listeners are DetachUDP's. ResumeAccepting undoes it.
func (s *Server) StopAccepting() error {
	s.mu.Lock()
	var waits []<-chan struct{}
	var dones []chan struct{}
	for _, l := range s.listeners {
		if l.tcp == nil {
			continue
		}
		waits = append(waits, l.pause())
		dones = append(dones, l.done)
	}
	s.mu.Unlock()
	t := time.NewTimer(stopAcceptingWait)
	defer t.Stop()
	for i, w := range waits {
		select {
		case <-w:
		case <-dones[i]:
		case <-t.C:
			return errors.New("server: an accept loop did not stop within " + stopAcceptingWait.String())
		}
	}
	return nil
}

// ResumeAccepting restarts the accept loops StopAccepting stopped (the
// handover failed; this process keeps serving).
func (s *Server) ResumeAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.tcp != nil {
			l.resume()
		}
	}
}

// handoverVersion is the version of HandoverState's document.
const handoverVersion = 1

// handoverDoc is HandoverState's JSON document: the state file's document
// and the backends down by their last active check, by pool.
type handoverDoc struct {
	Version int                 `json:"version"`
	State   json.RawMessage     `json:"state"`
	Down    map[string][]string `json:"down,omitempty"`
}

// handoverState is a decoded HandoverState, held by the new process's
// server (Options.Handover).
type handoverState struct {
	state State
	down  map[string]map[netip.AddrPort]bool
}

// HandoverState encodes the run-time state the new process of an upgrade
// takes over (Options.Handover): admin states, weight overrides, API
// backends, and the backends down by their last active check.
func (s *Server) HandoverState() ([]byte, error) {
	s.mu.Lock()
	st := s.snapshotState()
	down := map[string][]string{}
	for name, lp := range s.pools {
		for ap, be := range lp.byAddr {
			if !be.inGen {
				continue
			}
			be.mu.Lock()
			up := be.activeUp
			be.mu.Unlock()
			if !up {
				down[name] = append(down[name], ap.String())
			}
		}
	}
	s.mu.Unlock()
	sd, err := encodeState(st)
	if err != nil {
		return nil, fmt.Errorf("handover state: %w", err)
	}
	return json.Marshal(handoverDoc{Version: handoverVersion, State: sd, Down: down})
}

// decodeHandover decodes what HandoverState encoded; nil data is no state.
func decodeHandover(data []byte) (*handoverState, error) {
	if data == nil {
		return nil, nil
	}
	var doc handoverDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("handover state: %w", err)
	}
	if doc.Version != handoverVersion {
		return nil, fmt.Errorf("handover state: version %d, want %d", doc.Version, handoverVersion)
	}
	st, err := decodeState(doc.State)
	if err != nil {
		return nil, fmt.Errorf("handover state: %w", err)
	}
	h := &handoverState{state: st, down: map[string]map[netip.AddrPort]bool{}}
	for pool, addrs := range doc.Down {
		m := map[netip.AddrPort]bool{}
		for _, a := range addrs {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return nil, fmt.Errorf("handover state: pool %s: down backend %q: %w", pool, a, err)
			}
			m[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
		}
		h.down[pool] = m
	}
	return h, nil
}

// wasDown reports whether the old process saw the backend at ap of pool
// down (nil h: no handover).
func (h *handoverState) wasDown(pool string, ap netip.AddrPort) bool {
	return h != nil && h.down[pool][ap]
}

// applyHandover puts the handed-over state into the pools, as loadState
// does with the state file (after it: the old process's state is the
// newer). Called by Start with s.mu held.
func (s *Server) applyHandover() {
	if s.handover == nil {
		return
	}
	s.applyState(s.handover.state, "upgrade handover state")
	if len(s.handover.state.Pools) > 0 {
		s.saveState()
	}
}
