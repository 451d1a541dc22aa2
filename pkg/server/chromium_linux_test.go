package server

// chromium_linux_test.go: headless Chromium reaches two TLS backends by
// server name through lbctl, across a veth pair with MTU 1500, where its
// post-quantum ClientHello (X25519MLKEM768, about 2 KB) cannot fit in one
// TCP segment. The test captures the client's segments on the veth
// (AF_PACKET) and fails unless each routed hello arrived in at least two.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// helloRecorder keeps the first bytes a backend reads from a connection,
// enough to measure the ClientHello that arrived (records included).
type helloRecorder struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

const maxRecordedHello = 16 << 10

func (c *helloRecorder) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if room := maxRecordedHello - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(n, room)]...)
	}
	c.mu.Unlock()
	return n, err
}

// helloWireSize is the number of bytes, TLS record headers included, that
// carried the ClientHello at the start of b; 0 if b does not start with a
// whole one.
func helloWireSize(b []byte) int {
	var msg []byte
	off := 0
	for len(b)-off >= 5 && b[off] == 22 {
		n := int(binary.BigEndian.Uint16(b[off+3:]))
		if len(b)-off-5 < n {
			return 0
		}
		msg = append(msg, b[off+5:off+5+n]...)
		off += 5 + n
		if len(msg) >= 4 && msg[0] == 1 {
			if need := 4 + int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]); len(msg) >= need {
				return off - (len(msg) - need) // the record may go on past the hello
			}
		}
	}
	return 0
}

// namedTLSBackend is an HTTPS server (Go's crypto/tls, its own certificate,
// h2 and http/1.1) answering every request with a page naming it; it
// records the server name and wire size of every ClientHello it gets.
type namedTLSBackend struct {
	name string
	addr string
	mu   sync.Mutex
	seen []helloSeen
}

type helloSeen struct {
	sni  string
	size int
}

func newNamedTLSBackend(t *testing.T, name string) *namedTLSBackend {
	t.Helper()
	b := &namedTLSBackend{name: name}
	cert := selfSignedFor(t, name)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			// The hello has been read in full: measure it.
			size := 0
			if r, ok := h.Conn.(*helloRecorder); ok {
				r.mu.Lock()
				size = helloWireSize(r.buf)
				r.mu.Unlock()
			}
			b.mu.Lock()
			b.seen = append(b.seen, helloSeen{sni: h.ServerName, size: size})
			b.mu.Unlock()
			return nil, nil
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, "<!doctype html><html><body><p id=backend>served by %s</p></body></html>", name)
		}),
		TLSConfig:         cfg,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(recordingListener{ln}, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return b
}

func (b *namedTLSBackend) hellos() []helloSeen {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]helloSeen(nil), b.seen...)
}

type recordingListener struct{ net.Listener }

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &helloRecorder{Conn: c}, nil
}

// newMTU1500Netns is lbtest.NewNetns with both ends of the veth pair at
// MTU 1500 and generic segmentation offload off inside, so that what the
// namespace sends crosses the veth as the MSS-sized segments a real
// 1500-byte link carries (a veth would otherwise pass a 64 KB GSO packet as
// one).
func newMTU1500Netns(t *testing.T) *lbtest.Netns {
	t.Helper()
	ns := lbtest.NewNetns(t)
	if out, err := exec.Command("ip", "link", "set", ns.HostIf, "mtu", "1500").CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s mtu 1500: %v\n%s", ns.HostIf, err, out)
	}
	f := strings.Fields(ns.Exec(t, "ip", "-o", "link", "show", "type", "veth")) // "2: NAME@ifN: <...> ..."
	if len(f) < 2 {
		t.Fatalf("no veth in namespace %s", ns.Name)
	}
	peerIf, _, _ := strings.Cut(f[1], "@")
	ns.Exec(t, "ip", "link", "set", peerIf, "mtu", "1500", "gso_max_segs", "1")
	return ns
}

// segmentCapture reads the IPv4 packets arriving on one interface
// (AF_PACKET) and keeps, per TCP flow from src to dst, the payload sizes of
// its first data segments.
type segmentCapture struct {
	fd   int
	src  netip.Addr
	dst  netip.AddrPort
	mu   sync.Mutex
	segs map[uint16][]int // by client port: payload sizes in arrival order
	stop chan struct{}
	done chan struct{}
}

func hostToNet16(v uint16) uint16 { return v<<8 | v>>8 }

func newSegmentCapture(t *testing.T, ifname string, src netip.Addr, dst netip.AddrPort) *segmentCapture {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(hostToNet16(unix.ETH_P_IP)))
	if err != nil {
		t.Fatalf("AF_PACKET socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: hostToNet16(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind AF_PACKET to %s: %v", ifname, err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	c := &segmentCapture{fd: fd, src: src, dst: dst, segs: map[uint16][]int{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *segmentCapture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue // EAGAIN at the receive timeout
		}
		c.packet(buf[:n])
	}
}

// packet records an IPv4 TCP segment with a payload from src to dst.
func (c *segmentCapture) packet(p []byte) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != syscall.IPPROTO_TCP {
		return
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:]))
	if total > len(p) || ihl < 20 || total < ihl+20 {
		return
	}
	from := netip.AddrFrom4([4]byte(p[12:16]))
	to := netip.AddrFrom4([4]byte(p[16:20]))
	tcp := p[ihl:total]
	sport, dport := binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:])
	payload := len(tcp) - int(tcp[12]>>4)*4
	if from != c.src || to != c.dst.Addr() || dport != c.dst.Port() || payload <= 0 {
		return
	}
	c.mu.Lock()
	if len(c.segs[sport]) < 64 {
		c.segs[sport] = append(c.segs[sport], payload)
	}
	c.mu.Unlock()
}

func (c *segmentCapture) close() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	<-c.done
	unix.Close(c.fd)
}

// split returns, for every captured flow, how many segments carried its
// first size bytes and the largest of them.
func (c *segmentCapture) split(size int) (flows [][2]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.segs {
		n, sum, largest := 0, 0, 0
		for _, l := range s {
			if sum >= size {
				break
			}
			n++
			sum += l
			largest = max(largest, l)
		}
		if sum >= size {
			flows = append(flows, [2]int{n, largest})
		}
	}
	return flows
}

// TestChromiumRoutesBySNI: headless Chromium, in a network namespace behind
// a 1500-byte veth, opens https://a.test:PORT/ and https://b.test:PORT/
// (both names resolved to lbctl's listener); each page must come from the
// backend its name routes to, and each hello must have crossed the veth as
// more than one segment.
func TestChromiumRoutesBySNI(t *testing.T) {
	lbtest.NeedRoot(t)
	chromium := lbtest.Binary(t, "chromium", "/usr/bin/chromium", "chromium")
	ns := newMTU1500Netns(t)
	a, b := newNamedTLSBackend(t, "backend-a"), newNamedTLSBackend(t, "backend-b")
	h := startServer(t, fmt.Sprintf(`
[listeners.tls]
bind = "%s:0"
tls_inspect_timeout = "10s"
  [[listeners.tls.routes]]
  sni = ["a.test"]
  pool = "a"
  [[listeners.tls.routes]]
  sni = ["b.test"]
  pool = "b"
`, ns.HostAddr)+poolTOML("a", "", a.addr)+"[pools.a.health]\ncheck = \"none\"\n"+
		poolTOML("b", "", b.addr)+"[pools.b.health]\ncheck = \"none\"\n")
	lb := netip.MustParseAddrPort(h.addr("tls"))
	capture := newSegmentCapture(t, ns.HostIf, ns.NSAddr, lb)

	// Both browsers run at once: each takes seconds to start.
	tests := []struct {
		host string
		be   *namedTLSBackend
		dom  string
		err  error
	}{{host: "a.test", be: a}, {host: "b.test", be: b}}
	var wg sync.WaitGroup
	for i := range tests {
		tc := &tests[i]
		wg.Go(func() {
			url := fmt.Sprintf("https://%s:%d/", tc.host, lb.Port())
			tc.dom, tc.err = runChromium(chromium, ns.Name, url, t.TempDir(), "MAP a.test "+ns.HostAddr.String()+", MAP b.test "+ns.HostAddr.String())
		})
	}
	wg.Wait()
	for _, tc := range tests {
		if tc.err != nil {
			t.Fatal(tc.err)
		}
		if want := "served by " + tc.be.name; !strings.Contains(tc.dom, want) {
			t.Errorf("https://%s/: page %q does not contain %q", tc.host, tc.dom, want)
		}
		hellos := tc.be.hellos()
		if len(hellos) == 0 {
			t.Errorf("https://%s/: %s saw no ClientHello", tc.host, tc.be.name)
		}
		for _, hs := range hellos {
			if hs.sni != tc.host {
				t.Errorf("%s got a hello for %q, want only %q", tc.be.name, hs.sni, tc.host)
			}
		}
	}

	// Every hello the backends got arrived whole (lbctl wrote exactly the
	// bytes it read) and was larger than one segment at MTU 1500.
	var sizes []int
	for _, be := range []*namedTLSBackend{a, b} {
		for _, hs := range be.hellos() {
			if hs.size <= 1460 {
				t.Errorf("%s: a ClientHello of %d bytes (records included): it fits one segment; want Chromium's post-quantum hello (> 1460)", be.name, hs.size)
			}
			sizes = append(sizes, hs.size)
		}
	}
	// The capture saw each routed connection's hello arrive in two or more
	// segments, none larger than a 1500-byte link carries.
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		flows := capture.split(smallest(sizes))
		return len(flows) >= len(sizes), fmt.Sprintf("captured %d flows carrying a whole hello, want %d (one per hello the backends saw)", len(flows), len(sizes))
	})
	for _, f := range capture.split(smallest(sizes)) {
		if f[0] < 2 || f[1] > 1460 {
			t.Errorf("a hello crossed the veth in %d segments, the largest %d bytes; want >= 2 segments of <= 1460", f[0], f[1])
		}
	}
	t.Logf("hello sizes %v; segments per hello (count, largest): %v", sizes, capture.split(smallest(sizes)))
}

func smallest(s []int) int {
	m := 0
	for i, v := range s {
		if i == 0 || v < m {
			m = v
		}
	}
	return m
}

// runChromium runs headless Chromium in netns ns with profile directory dir
// and returns the DOM of url after load. Chromium and its helpers run in
// their own process group, which is killed at the end (by its id).
func runChromium(chromium, ns, url, dir, rules string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--ignore-certificate-errors", "--user-data-dir="+dir,
		"--host-resolver-rules="+rules, "--dump-dom", url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind, if any
	}
	if err != nil {
		return "", fmt.Errorf("chromium %s: %v\nstderr: %s", url, err, chromiumTail(errOut.String(), 2000))
	}
	return out.String(), nil
}

func chromiumTail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
