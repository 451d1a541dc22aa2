package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/lbctl/lbctl/pkg/udpproxy"
	"go.uber.org/zap"
)

// UDP sessions in the handover of lbctl upgrade. Both processes hold every
// UDP listener socket (the new one a duplicate passed with the listeners).
// The new process serves its UDP listeners held (Options.HoldUDP): they
// send the replies of the sessions they adopt, but read nothing. The old
// process, in DetachUDP, stops each listener's reader and takes its
// sessions out (udpproxy.Listener.Detach): the backend sockets, unread,
// travel in batches with a description of each session. The new process
// adopts them (AdoptUDP) on the listener with the same name and address,
// pinned to the backend they had; then ReleaseUDP, and its readers take
// the datagrams that waited in the shared sockets meanwhile. No datagram
// either way is read by a process that is not the session's owner, so none
// is lost.
//
// The old process's listeners stay held afterwards, with no session, until
// their sockets close with the process; ResumeUDP makes them read again if
// the handover fails after DetachUDP.

// udpHandoverVersion is the version of the batches' Meta; AdoptUDP refuses
// another.
const udpHandoverVersion = 1

// udpBatch is the Meta of one batch: Sessions[i] goes with Files[i].
type udpBatch struct {
	Version  int          `json:"version"`
	Sessions []udpSession `json:"sessions"`
}

// udpSession describes one session of a batch (udpproxy.Handoff).
type udpSession struct {
	Listener     string    `json:"listener"` // its name
	Local        string    `json:"local"`    // the listener socket's address
	Client       string    `json:"client"`
	Dst          string    `json:"dst,omitempty"`
	Backend      string    `json:"backend"`
	BackendAddr  string    `json:"backend_addr"`
	Start        time.Time `json:"start"`
	Last         time.Time `json:"last"`
	Heard        bool      `json:"heard,omitempty"`
	Attempts     int       `json:"attempts"`
	Requests     int64     `json:"requests"`
	Replies      int64     `json:"replies"`
	BytesIn      int64     `json:"bytes_in"`
	BytesOut     int64     `json:"bytes_out"`
	DatagramsIn  int64     `json:"datagrams_in"`
	DatagramsOut int64     `json:"datagrams_out"`
}

// udpListenerFor returns the udpproxy.Listener of l, made if need be, or
// nil when l's serveUDP has returned (l.done is closed). The Listener is
// made by whichever comes first, serveUDP or AdoptUDP (so that an adoption
// right after Start finds the listener serveUDP is about to serve), and
// forgotten when serveUDP returns. Called with s.udpMu held.
func (s *Server) udpListenerFor(l *listener) *udpproxy.Listener {
	if ul := s.udpLs[l]; ul != nil {
		return ul
	}
	select {
	case <-l.done:
		return nil
	default:
	}
	ul := &udpproxy.Listener{
		Conn: l.udp,
		Proxy: func() *udpproxy.Proxy {
			if st := l.state.Load(); st != nil {
				return st.udp
			}
			return nil
		},
		Sessions: &l.active,
		// Once per new session, with the generation in force.
		Admit: func(client netip.Addr, evict func() bool) func() {
			return l.state.Load().gate.admitUDP(l, client, evict)
		},
		Hold: s.opts.HoldUDP,
	}
	s.udpLs[l] = ul
	return ul
}

// udpTarget is a UDP listener of the server with its handover name.
type udpTarget struct {
	name, local string
	l           *listener
}

// udpListeners returns the server's UDP listeners in service (not those a
// reload removed, whose sessions finish where they are).
func (s *Server) udpListeners() []udpTarget {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []udpTarget
	for _, l := range s.listeners {
		st := l.state.Load()
		if l.udp == nil || st == nil {
			continue
		}
		out = append(out, udpTarget{name: st.name, local: localKey(l.udp.LocalAddr()), l: l})
	}
	return out
}

// localKey writes a listener socket's address as the handover names it.
func localKey(a net.Addr) string {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return a.String()
	}
	return NewSocketKey("udp", ua.AddrPort()).String()
}

// DetachUDP runs in the old process: its UDP listeners stop reading (the
// datagrams wait in the shared socket for the new process), and every open
// session is passed to send with its backend socket and state, in batches of
// at most MaxHandoverFiles descriptors. It returns how many were passed.
// DetachUDP closes each batch's files once send has returned. When send
// fails, the sessions not yet passed are served here again, the listeners
// read again, and the error is returned; the sessions passed before are
// gone from this process.
func (s *Server) DetachUDP(ctx context.Context, send func(HandoverBatch) error) (moved int, err error) {
	type detached struct {
		t  udpTarget
		ul *udpproxy.Listener
		hs []udpproxy.Handoff
	}
	var (
		all  []detached
		errs []error
	)
	for _, t := range s.udpListeners() {
		s.udpMu.Lock()
		ul := s.udpListenerFor(t.l)
		s.udpMu.Unlock()
		if ul == nil {
			continue // closed meanwhile
		}
		hs, err := ul.Detach(ctx)
		if errors.Is(err, net.ErrClosed) {
			continue
		}
		if err != nil && hs == nil {
			errs = append(errs, fmt.Errorf("udp listener %s: %w", t.name, err))
			continue
		}
		if err != nil { // some sessions could not be duplicated: they ended
			s.log.Warn("upgrade: udp sessions left behind", zap.String("listener", t.name), zap.Error(err))
		}
		all = append(all, detached{t, ul, hs})
	}
	if len(errs) > 0 {
		for _, d := range all {
			s.readopt(d.ul, d.hs, d.t.name)
		}
		s.ResumeUDP()
		return 0, errors.Join(errs...)
	}
	// Batches of at most MaxHandoverFiles sessions of one listener.
	var (
		batch udpBatch
		files []*os.File
	)
	flush := func() error {
		if len(files) == 0 {
			return nil
		}
		batch.Version = udpHandoverVersion
		meta, err := json.Marshal(&batch)
		if err == nil {
			err = send(HandoverBatch{Meta: meta, Files: files})
		}
		if err != nil {
			return err
		}
		for _, f := range files {
			f.Close()
		}
		moved += len(files)
		batch.Sessions, files = batch.Sessions[:0], files[:0]
		return nil
	}
	for i, d := range all {
		for j, h := range d.hs {
			batch.Sessions = append(batch.Sessions, describe(d.t, h))
			files = append(files, h.File)
			if len(files) == MaxHandoverFiles || j == len(d.hs)-1 {
				if err := flush(); err != nil {
					// The unsent ones come back: this batch's, and the
					// rest of this listener's and the others'.
					s.readopt(d.ul, d.hs[j+1-len(files):], d.t.name)
					for _, r := range all[i+1:] {
						s.readopt(r.ul, r.hs, r.t.name)
					}
					s.ResumeUDP()
					return moved, fmt.Errorf("udp handover: %w", err)
				}
			}
		}
	}
	return moved, nil
}

// readopt serves sessions that were detached but not passed on again
// here.
func (s *Server) readopt(ul *udpproxy.Listener, hs []udpproxy.Handoff, name string) {
	if len(hs) == 0 {
		return
	}
	if n, err := ul.Adopt(hs); err != nil {
		s.log.Warn("upgrade: udp sessions not taken back", zap.String("listener", name),
			zap.Int("taken_back", n), zap.Error(err))
	}
}

// describe writes a session of listener t for a batch.
func describe(t udpTarget, h udpproxy.Handoff) udpSession {
	d := udpSession{
		Listener: t.name, Local: t.local, Client: h.Client.String(), Backend: h.Backend,
		BackendAddr: h.BackendAddr.String(), Start: h.Start, Last: h.Last, Heard: h.Heard,
		Attempts: h.Attempts, Requests: h.Requests, Replies: h.Replies, BytesIn: h.BytesIn,
		BytesOut: h.BytesOut, DatagramsIn: h.DatagramsIn, DatagramsOut: h.DatagramsOut,
	}
	if h.Dst.IsValid() {
		d.Dst = h.Dst.String()
	}
	return d
}

// handoff reads a session of a batch back.
func (d *udpSession) handoff(f *os.File) (udpproxy.Handoff, error) {
	h := udpproxy.Handoff{
		Backend: d.Backend, File: f, Start: d.Start, Last: d.Last, Heard: d.Heard,
		Attempts: d.Attempts, Requests: d.Requests, Replies: d.Replies, BytesIn: d.BytesIn,
		BytesOut: d.BytesOut, DatagramsIn: d.DatagramsIn, DatagramsOut: d.DatagramsOut,
	}
	var err error
	if h.Client, err = netip.ParseAddrPort(d.Client); err != nil {
		return h, fmt.Errorf("client: %w", err)
	}
	if h.BackendAddr, err = netip.ParseAddrPort(d.BackendAddr); err != nil {
		return h, fmt.Errorf("backend address: %w", err)
	}
	if d.Dst != "" {
		if h.Dst, err = netip.ParseAddr(d.Dst); err != nil {
			return h, fmt.Errorf("dst: %w", err)
		}
	}
	return h, nil
}

// AdoptUDP runs in the new process (started with Options.HoldUDP), after
// Start: it serves the sessions of one batch that DetachUDP sent, each on
// the UDP listener with its name and address (else the one with its
// address) and on the backend it had. It closes the batch's files. A
// session it cannot serve (no such listener or backend any more) is closed
// and named in the error; the others are served.
func (s *Server) AdoptUDP(b HandoverBatch) error {
	var batch udpBatch
	if err := json.Unmarshal(b.Meta, &batch); err != nil {
		closeAll(b.Files)
		return fmt.Errorf("udp handover batch: %w", err)
	}
	if batch.Version != udpHandoverVersion {
		closeAll(b.Files)
		return fmt.Errorf("udp handover batch: version %d, this lbctl reads %d", batch.Version, udpHandoverVersion)
	}
	if len(batch.Sessions) != len(b.Files) {
		closeAll(b.Files)
		return fmt.Errorf("udp handover batch: %d sessions, %d descriptors", len(batch.Sessions), len(b.Files))
	}
	targets := s.udpListeners()
	find := func(name, local string) *listener {
		var byAddr *listener
		for _, t := range targets {
			if t.local == local {
				if t.name == name {
					return t.l
				}
				byAddr = t.l
			}
		}
		return byAddr
	}
	files := append([]*os.File(nil), b.Files...) // nil once handed to Adopt, which closes it
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	groups := map[*listener][]udpproxy.Handoff{}
	var errs []error
	for i := range batch.Sessions {
		d := &batch.Sessions[i]
		l := find(d.Listener, d.Local)
		if l == nil {
			errs = append(errs, fmt.Errorf("session %s: no udp listener %s on %s", d.Client, d.Listener, d.Local))
			continue
		}
		h, err := d.handoff(files[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("session %s: %w", d.Client, err))
			continue
		}
		groups[l] = append(groups[l], h)
		files[i] = nil // Adopt closes it
	}
	for l, hs := range groups {
		s.udpMu.Lock()
		ul := s.udpListenerFor(l)
		s.udpMu.Unlock()
		if ul == nil {
			for _, h := range hs {
				h.File.Close()
			}
			errs = append(errs, fmt.Errorf("%d sessions: their udp listener closed", len(hs)))
			continue
		}
		if _, err := ul.Adopt(hs); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Warn("upgrade: udp sessions not adopted", zap.Error(err))
		return err
	}
	return nil
}

// ReleaseUDP lets the UDP listeners of a server started with
// Options.HoldUDP read from their sockets: once the sessions are adopted,
// or when the handover failed. Without HoldUDP it does nothing; listeners
// that later reloads add are not held.
func (s *Server) ReleaseUDP() {
	s.udpMu.Lock()
	defer s.udpMu.Unlock()
	if !s.opts.HoldUDP {
		return
	}
	s.opts.HoldUDP = false
	s.releaseUDPLocked()
}

// ResumeUDP makes the UDP listeners of the old process read again after
// DetachUDP, when the handover fails past it (the new process died): the
// sessions passed on are gone, new ones open here.
func (s *Server) ResumeUDP() {
	s.udpMu.Lock()
	defer s.udpMu.Unlock()
	s.releaseUDPLocked()
}

// releaseUDPLocked releases every UDP listener of s. Called with
// s.udpMu held.
func (s *Server) releaseUDPLocked() {
	for _, ul := range s.udpLs {
		ul.Release()
	}
}

// closeAll closes the files of a batch that is refused whole.
func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}
