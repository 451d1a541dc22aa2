package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/tlshello/tlshellotest"
)

// upgradeEnv is a real lbctl in front of the peers of an upgrade test:
//
//	load    (tcp)  -> two CheckPeers: the load's streams and short connections
//	dgram   (udp)  -> two UDPEchoPeers: the load's UDP sessions
//	echo    (tcp)  -> an echo backend: the bulk and idle connections
//	pp      (tcp, accept_proxy_protocol) -> echo: a connection in its PROXY-header phase
//	tls     (tcp, a route by server name) -> echo: a connection in TLS inspection
//	hold    (tcp)  -> holdBackend: a half-closed connection
//
// Its process is an lbtest.Lbctl, followed across upgrades by PID. UDP
// sessions expire 5s after their last datagram: a stop drains them (up
// to shutdown_timeout), so the last process stops soon after the load.
type upgradeEnv struct {
	t     *testing.T
	pat   *lbtest.Pattern
	peers *lbtest.LoadPeers
	hold  *holdBackend
	lb    *lbtest.Lbctl
	admin string
	front struct{ load, dgram, echo, pp, tls, hold string }
}

// newUpgradeEnv starts the peers and lbctl with shutdown_timeout sd.
func newUpgradeEnv(t *testing.T, sd time.Duration) *upgradeEnv {
	t.Helper()
	if _, err := lbtest.RaiseFileLimit(); err != nil {
		t.Logf("RLIMIT_NOFILE: %v", err)
	}
	e := &upgradeEnv{t: t, pat: lbtest.NewPattern(16), admin: freePort(t)}
	peers, err := lbtest.NewLoadPeers(e.pat)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peers.Close)
	e.peers = peers
	echo := lbtest.NewTCP(t, lbtest.Echo)
	e.hold = newHoldBackend(t, e.pat)
	e.front.load, e.front.echo, e.front.pp = freePort(t), freePort(t), freePort(t)
	e.front.tls, e.front.hold = freePort(t), freePort(t)
	e.front.dgram = fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))

	conf := fmt.Sprintf(`shutdown_timeout = %q
[log]
level = "info"
access = false
[admin]
bind = %q

%s
[listeners.echo]
bind = %q
pool = "echo"
idle_timeout = "2m"
[listeners.pp]
bind = %q
pool = "echo"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
proxy_protocol_timeout = "1m"
[listeners.tls]
bind = %q
tls_inspect_timeout = "1m"
  [[listeners.tls.routes]]
  sni = ["moved.example.com"]
  pool = "echo"
[pools.echo]
  [pools.echo.health]
  check = "none"
  [[pools.echo.backends]]
  address = %q

[listeners.hold]
bind = %q
pool = "hold"
idle_timeout = "2m"
[pools.hold]
  [pools.hold.health]
  check = "none"
  [[pools.hold.backends]]
  address = %q
`, sd.String(), e.admin, e.peers.Listeners(e.front.load, e.front.dgram, "2m", "5s"),
		e.front.echo, e.front.pp, e.front.tls, echo.Addr, e.front.hold, e.hold.addr)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lbctl.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	lb, err := lbtest.StartLbctl(lbctlBin, filepath.Join(dir, "lbctl.log"), e.admin, "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.lb = lb
	t.Cleanup(func() {
		lb.Kill()
		if t.Failed() {
			t.Logf("lbctl log (end):\n%s", lb.Tail(8000))
		}
	})
	return e
}

// report is the load's report with what the peers saw added.
func (e *upgradeEnv) report(ld *lbtest.Load) *lbtest.Report {
	return e.peers.Report(ld)
}

// holdBackend reads a connection to its end (FIN), verifying the
// pattern's stream 0, reports that on gotEOF, and answers only once
// release is closed: 256 KiB of stream 1, then FIN. In between the
// connection is half-closed in lbctl.
type holdBackend struct {
	addr    string
	gotEOF  chan error
	release chan struct{}
	quit    chan struct{} // closed in the test's cleanup
}

const holdReply = 256 << 10

func newHoldBackend(t *testing.T, pat *lbtest.Pattern) *holdBackend {
	h := &holdBackend{gotEOF: make(chan error, 4), release: make(chan struct{}), quit: make(chan struct{})}
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		b, err := io.ReadAll(c)
		if err == nil && !pat.Match(0, 0, b) {
			err = fmt.Errorf("hold backend: %d bytes, not the pattern's", len(b))
		}
		h.gotEOF <- err
		if err != nil {
			return
		}
		select {
		case <-h.release:
		case <-h.quit:
			return
		}
		c.Write(pat.At(1, 0, holdReply))
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	t.Cleanup(func() { close(h.quit) }) // before be.Close, which waits for the handler
	h.addr = be.Addr
	return h
}

// dialTCP connects to addr with a deadline for the whole test.
func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	return c.(*net.TCPConn)
}

// bulk is a connection through the echo listener that sends the
// pattern's stream as fast as lbctl moves it (up to a cap), verifying
// what comes back, until stop: the connection an upgrade finds in the
// middle of a splice.
type bulk struct {
	c        *net.TCPConn
	pat      *lbtest.Pattern
	stop     chan struct{}
	sent     atomic.Int64
	received atomic.Int64
	werr     chan error
	rerr     chan error
}

const bulkKey = 77

func startBulk(t *testing.T, addr string, pat *lbtest.Pattern) *bulk {
	t.Helper()
	b := &bulk{c: dialTCP(t, addr), pat: pat, stop: make(chan struct{}), werr: make(chan error, 1), rerr: make(chan error, 1)}
	go func() {
		var off int64
		for off < 4<<30 {
			select {
			case <-b.stop:
				b.werr <- b.c.CloseWrite()
				return
			default:
			}
			n, err := b.c.Write(pat.At(bulkKey, off, 256<<10))
			off += int64(n)
			b.sent.Store(off)
			if err != nil {
				b.werr <- fmt.Errorf("bulk write at %d: %w", off, err)
				return
			}
		}
		b.werr <- b.c.CloseWrite()
	}()
	go func() {
		buf := make([]byte, 256<<10)
		var off int64
		for {
			n, err := b.c.Read(buf)
			if n > 0 && !pat.Match(bulkKey, off, buf[:n]) {
				b.rerr <- fmt.Errorf("bulk bytes %d-%d corrupted", off, off+int64(n))
				return
			}
			off += int64(n)
			b.received.Store(off)
			if err == io.EOF {
				b.rerr <- nil
				return
			}
			if err != nil {
				b.rerr <- fmt.Errorf("bulk read at %d: %w", off, err)
				return
			}
		}
	}()
	return b
}

// finish stops the writer and checks that every byte came back, then EOF.
func (b *bulk) finish(t *testing.T) {
	t.Helper()
	close(b.stop)
	if err := <-b.werr; err != nil {
		t.Errorf("bulk: %v", err)
	}
	if err := <-b.rerr; err != nil {
		t.Errorf("bulk: %v", err)
	}
	if s, r := b.sent.Load(), b.received.Load(); s != r {
		t.Errorf("bulk: sent %d, received %d", s, r)
	}
}

// echoExchange writes msg on c and reads the echo of it.
func echoExchange(c *net.TCPConn, msg []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo of %d bytes: %w", len(msg), err)
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	return nil
}

// closeClean half-closes c and expects the echo side's EOF with nothing
// more.
func closeClean(c *net.TCPConn) error {
	if err := c.CloseWrite(); err != nil {
		return err
	}
	rest, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("after close write: %w", err)
	}
	if len(rest) > 0 {
		return fmt.Errorf("%d bytes after the end", len(rest))
	}
	return nil
}

// clientHello is a ClientHello for server name, as Go's client sends it.
func clientHello(t *testing.T, name string) []byte {
	t.Helper()
	h, err := tlshellotest.Hello(&tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	return h
}
