package main

import (
	"fmt"
	"net/netip"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/lbctl/lbctl/pkg/systemd"
	"go.uber.org/zap"
)

// Running under systemd (examples/lbctl.service). serve reports to the
// service manager through pkg/systemd: READY=1 once every listener is bound,
// RELOADING=1 and READY=1 around every reload, STOPPING=1 on SIGTERM,
// STATUS= with the summary below, and WATCHDOG=1 at half $WATCHDOG_USEC
// while server.Alive holds. Sockets passed by a .socket unit
// (examples/lbctl.socket) replace the binds they match. Outside systemd
// none of this does or logs anything.

// summary is the one-line STATUS= shown by `systemctl status lbctl`:
// "2 listeners, 3/4 backends up".
func (d *daemon) summary() string {
	st := d.srv.Status()
	up, total := 0, 0
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			total++
			if b.Health == "up" {
				up++
			}
		}
	}
	return fmt.Sprintf("%s, %d/%s up", plural(len(st.Listeners), "listener"), up, plural(total, "backend"))
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// inheritedSockets takes over the sockets systemd passed (socket
// activation), keyed as server.Options.Inherited wants. It logs what it
// found, and warns about an inherited socket that no listener of cfg binds:
// it stays open, for a reload that adds such a listener. Without socket
// activation it returns nil and logs nothing.
func inheritedSockets(log *zap.Logger, cfg *config.Config) map[server.SocketKey]server.InheritedSocket {
	socks, err := systemd.Inherited()
	if err != nil {
		log.Warn("socket activation: unusable file descriptors closed", zap.Error(err))
	}
	if len(socks) == 0 {
		return nil
	}
	binds := map[server.SocketKey]string{}
	for _, l := range cfg.Listeners {
		if ap, err := netip.ParseAddrPort(l.Bind); err == nil {
			binds[server.NewSocketKey(l.Protocol, ap)] = l.Name
		}
	}
	out := make(map[server.SocketKey]server.InheritedSocket, len(socks))
	for _, s := range socks { // in descriptor order
		k := server.NewSocketKey(s.Protocol, s.Addr)
		out[k] = s.Conn
		if name, ok := binds[k]; ok {
			log.Info("socket activation: listener takes the inherited socket", zap.String("listener", name), zap.Stringer("socket", k))
		} else {
			log.Warn("socket activation: no listener binds this inherited socket; it stays unused (the listener's bind must be the same IP:port)",
				zap.Stringer("socket", k))
		}
	}
	return out
}
