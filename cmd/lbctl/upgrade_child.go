package main

// upgrade_child.go: the new process's side of `lbctl upgrade`
// (upgrade.go has the old one's). Started with $LBCTL_UPGRADE_FD, serve
// receives the listening sockets and the state before it builds the
// server, serves the sockets (the listeners as Options.Inherited, the
// admin API's and the control socket as admin.Options.Listener), applies
// the state (server.Options.Handover), holds its UDP listeners
// (Options.HoldUDP) and, once started, answers "ready". Then it adopts the
// sessions and connections the old process sends, releases UDP, and
// answers "done". A failure before "ready" is sent to the old process as
// "failed" with the reason (and serve exits with it).

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lbctl/lbctl/pkg/server"
	"github.com/lbctl/lbctl/pkg/upgrade"
	"go.uber.org/zap"
)

// setupTimeout bounds each message the new process waits for before it
// starts (the old one sends them all at once).
const setupTimeout = 30 * time.Second

// handover is what the new process received from the old one.
type handover struct {
	conn    *upgrade.Conn
	log     *zap.Logger
	sockets map[server.SocketKey]server.InheritedSocket // the listeners'
	passed  []*passedSocket
	admin   map[string]net.Listener // by [admin] bind
	control map[string]net.Listener // by control socket path
	state   []byte
	// droppedControl: the paths of passed control sockets this process
	// did not take (control_socket changed), told to the old process with
	// "done" so that it removes their files.
	droppedControl []string
}

// passedSocket is a listening socket passed by the old process, served as
// an inherited socket. Once the server has started (and taken duplicates
// of those it binds), release closes it: a socket no listener binds any
// more must not queue connections nobody accepts. A later File returns
// nil, so a reload that brings such a listener back binds a new socket.
type passedSocket struct {
	mu   sync.Mutex
	sock interface {
		File() (*os.File, error)
		Close() error
	}
}

// File returns a duplicate of the socket, or nil once released.
func (p *passedSocket) File() (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sock == nil {
		return nil, nil
	}
	return p.sock.File()
}

func (p *passedSocket) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sock != nil {
		p.sock.Close()
		p.sock = nil
	}
}

// receiveHandover reads the sockets and the state the old process sends
// first.
func receiveHandover(conn *upgrade.Conn, log *zap.Logger) (*handover, error) {
	h := &handover{conn: conn, log: log, sockets: map[server.SocketKey]server.InheritedSocket{},
		admin: map[string]net.Listener{}, control: map[string]net.Listener{}}
	for {
		m, err := conn.Recv(setupTimeout)
		if err != nil {
			h.closeAll()
			return nil, fmt.Errorf("upgrade: from the old process: %w", err)
		}
		switch m.Kind {
		case msgListeners:
			err = h.addSockets(m)
		case msgState:
			h.state = m.Meta
			m.CloseFiles()
			return h, nil
		default:
			m.CloseFiles()
			err = fmt.Errorf("unexpected message %q", m.Kind)
		}
		if err != nil {
			h.closeAll()
			return nil, fmt.Errorf("upgrade: from the old process: %w", err)
		}
	}
}

// addSockets takes the sockets of one "listeners" message.
func (h *handover) addSockets(m upgrade.Message) error {
	defer m.CloseFiles() // each is duplicated by net.File*
	var metas []socketMeta
	if err := json.Unmarshal(m.Meta, &metas); err != nil || len(metas) != len(m.Files) {
		return fmt.Errorf("listeners: %d descriptors, meta %q (%v)", len(m.Files), m.Meta, err)
	}
	for i, sm := range metas {
		kind, rest, _ := strings.Cut(sm.Key, "|")
		f := m.Files[i]
		switch kind {
		case "tcp", "udp":
			ap, err := netip.ParseAddrPort(rest)
			if err != nil {
				return fmt.Errorf("socket %s: %w", sm.Key, err)
			}
			p := &passedSocket{}
			if kind == "tcp" {
				ln, err := net.FileListener(f)
				if err != nil {
					return fmt.Errorf("socket %s: %w", sm.Key, err)
				}
				tl, ok := ln.(*net.TCPListener)
				if !ok {
					ln.Close()
					return fmt.Errorf("socket %s is not a TCP listener", sm.Key)
				}
				p.sock = tl
			} else {
				pc, err := net.FilePacketConn(f)
				if err != nil {
					return fmt.Errorf("socket %s: %w", sm.Key, err)
				}
				uc, ok := pc.(*net.UDPConn)
				if !ok {
					pc.Close()
					return fmt.Errorf("socket %s is not a UDP socket", sm.Key)
				}
				p.sock = uc
			}
			h.passed = append(h.passed, p)
			h.sockets[server.NewSocketKey(kind, ap)] = p
		case "admin", "control":
			ln, err := net.FileListener(f)
			if err != nil {
				return fmt.Errorf("socket %s: %w", sm.Key, err)
			}
			if kind == "admin" {
				h.admin[rest] = ln
			} else {
				h.control[rest] = ln
			}
		default:
			return fmt.Errorf("socket of unknown kind %q", sm.Key)
		}
	}
	return nil
}

// adminListener takes the passed admin API socket if the new [admin] bind
// is the one it was bound for (nil otherwise: bind anew).
func (h *handover) adminListener(bind string) net.Listener {
	if h == nil {
		return nil
	}
	ln := h.admin[bind]
	delete(h.admin, bind)
	return ln
}

// controlListener is adminListener for the control socket.
func (h *handover) controlListener(path string) net.Listener {
	if h == nil {
		return nil
	}
	ln := h.control[path]
	delete(h.control, path)
	return ln
}

// started releases the passed sockets once the server holds its own
// duplicates, and closes the admin and control sockets nobody took.
func (h *handover) started() {
	for _, p := range h.passed {
		p.release()
	}
	h.passed = nil
	for k, ln := range h.admin {
		h.log.Info("upgrade: the [admin] bind changed; the old one is closed", zap.String("old_bind", k))
		ln.Close()
	}
	for k, ln := range h.control {
		h.log.Info("upgrade: the control socket path changed; the old one is closed", zap.String("old_path", k))
		ln.Close()
		h.droppedControl = append(h.droppedControl, k)
	}
	h.admin, h.control = nil, nil
}

// closeAll closes what was received, when the start fails.
func (h *handover) closeAll() {
	h.started()
}

// fail tells the old process why this one cannot start.
func (h *handover) fail(err error) {
	if h == nil || err == nil {
		return
	}
	h.closeAll()
	h.conn.Send(upgrade.Message{Kind: msgFailed, Meta: []byte(err.Error())})
}

// run tells the old process that this one serves, then adopts what the
// old one hands over, until "done" (or until the old process goes away:
// what was adopted stays). UDP listeners are released in any case, and
// the channel is closed. serving is called once, before this process
// confirms "done" (or when run returns otherwise): the old process answers
// the upgrade request once it has the confirmation, so a reload or the next
// upgrade sent as soon as that answer came must find this process taking
// requests, not still in the handover.
func (h *handover) run(srv *server.Server, msgTimeout time.Duration, serving func()) {
	var once sync.Once
	defer h.conn.Close()
	defer once.Do(serving)
	defer srv.ReleaseUDP()
	meta, _ := json.Marshal(readyMeta{PID: os.Getpid()})
	if err := h.conn.Send(upgrade.Message{Kind: msgReady, Meta: meta}); err != nil {
		h.log.Error("upgrade: cannot tell the old process that this one is ready", zap.Error(err))
		return
	}
	var tcpErrs, udpErrs int
	for {
		m, err := h.conn.Recv(msgTimeout)
		if err != nil {
			h.log.Error("upgrade: the old process stopped handing over; this process serves what it has", zap.Error(err))
			return
		}
		b := server.HandoverBatch{Meta: m.Meta, Files: m.Files}
		switch m.Kind {
		case msgUDP:
			if err := srv.AdoptUDP(b); err != nil {
				m.CloseFiles() // those sessions end
				if udpErrs++; udpErrs == 1 {
					h.log.Error("upgrade: UDP sessions not adopted", zap.Error(err))
				}
			}
		case msgUDPDone:
			srv.ReleaseUDP()
		case msgTCP:
			if err := srv.AdoptTCP(b); err != nil {
				m.CloseFiles() // those connections end
				if tcpErrs++; tcpErrs == 1 {
					h.log.Error("upgrade: TCP connections not adopted", zap.Error(err))
				}
			}
		case msgDone:
			m.CloseFiles()
			var dm doneMeta
			json.Unmarshal(m.Meta, &dm)
			srv.ReleaseUDP() // released already by "udp-done"; in case it never came
			once.Do(serving)
			reply, _ := json.Marshal(doneReply{DroppedControl: h.droppedControl})
			if err := h.conn.Send(upgrade.Message{Kind: msgDone, Meta: reply}); err != nil {
				h.log.Error("upgrade: cannot confirm the handover to the old process", zap.Error(err))
			}
			h.log.Info("upgrade: took over from the old process", zap.Int("tcp", dm.TCP), zap.Int("udp", dm.UDP),
				zap.Int("tcp_batches_failed", tcpErrs), zap.Int("udp_batches_failed", udpErrs))
			return
		default:
			m.CloseFiles()
			h.log.Error("upgrade: unexpected message from the old process", zap.String("kind", m.Kind))
			return
		}
	}
}
