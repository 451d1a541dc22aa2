package main

// splithello.go: "lbbench splithello", the split-ClientHello comparison.
// Not a measure of speed: it sends the same ClientHellos, shaped the ways
// real networks and clients shape them, to lbctl, HAProxy and nginx, each
// configured to route two names to two pools and everything else to a
// fallback pool, and reports what each proxy did with each shape: routed
// right, fell to the fallback, or closed. docs/benchmarks.md records a run.

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// helloShape is one way of putting a ClientHello on the wire.
type helloShape struct {
	Name string
	PQ   bool // the post-quantum hello (X25519MLKEM768, about 1.5 KB); else X25519 only
	// Records re-frames the handshake message into TLS records of at most
	// this many bytes (0: as the client made it, one record).
	Records int
	// Chunks writes the (re-framed) bytes in pieces of at most this many
	// bytes with TCP_NODELAY, Pause between them (0: one write);
	// FirstChunk writes that many bytes, then the rest after Pause.
	Chunks     int
	FirstChunk int
	Pause      time.Duration
	// SNILast moves the server_name extension after the key share, as
	// Chromium's randomised extension order often does: in a hello split
	// at 1448 bytes the name then arrives in the second segment.
	SNILast bool
	// Truncate sends only the first Truncate bytes and then waits: a hello
	// that never completes, held open past the proxies' 10 s timeout.
	Truncate int
}

// helloShapes are the shapes compared. The pauses keep every hello well
// inside the 10 s inspection timeout all three proxies are given.
var helloShapes = []helloShape{
	{Name: "classic hello, one segment", PQ: false},
	{Name: "PQ hello, one write", PQ: true},
	{Name: "PQ hello, two segments 200 ms apart (1448 + rest, as over MTU 1500)", PQ: true, FirstChunk: 1448, Pause: 200 * time.Millisecond},
	{Name: "PQ hello, server name last, two segments 200 ms apart", PQ: true, SNILast: true, FirstChunk: 1448, Pause: 200 * time.Millisecond},
	{Name: "PQ hello, one byte per segment, 1 ms apart", PQ: true, Chunks: 1, Pause: time.Millisecond},
	{Name: "classic hello, one byte per segment, 10 ms apart", PQ: false, Chunks: 1, Pause: 10 * time.Millisecond},
	{Name: "PQ hello in 64-byte TLS records, one write", PQ: true, Records: 64},
	{Name: "PQ hello in 512-byte TLS records, one per segment 50 ms apart", PQ: true, Records: 512, Chunks: 517, Pause: 50 * time.Millisecond},
	{Name: "PQ hello, first record header alone, then the rest 200 ms later", PQ: true, FirstChunk: 5, Pause: 200 * time.Millisecond},
	{Name: "PQ hello cut short after 1000 bytes, held open past the 10 s timeout", PQ: true, Truncate: 1000},
}

// shapeWire returns the bytes of hello as shape sends them, and the
// pieces it writes them in.
func shapeWire(hello []byte, s helloShape) (wire []byte, pieces [][]byte) {
	wire = hello
	if s.SNILast {
		wire = sniLast(wire)
	}
	if s.Records > 0 {
		wire = reframe(wire, s.Records)
	}
	if s.Truncate > 0 && s.Truncate < len(wire) {
		wire = wire[:s.Truncate]
	}
	switch {
	case s.FirstChunk > 0 && s.FirstChunk < len(wire):
		return wire, [][]byte{wire[:s.FirstChunk], wire[s.FirstChunk:]}
	case s.Chunks <= 0:
		return wire, [][]byte{wire}
	}
	for rest := wire; len(rest) > 0; {
		k := min(s.Chunks, len(rest))
		pieces = append(pieces, rest[:k])
		rest = rest[k:]
	}
	return wire, pieces
}

// sniLast returns hello (one record holding a whole ClientHello) with its
// server_name extension moved to the end of the extensions; hello itself
// when it cannot.
func sniLast(hello []byte) []byte {
	if len(hello) < 5+4+2+32+1 {
		return hello
	}
	m := hello[5:]
	p := 4 + 2 + 32
	skip := func(lenBytes int) bool {
		if p+lenBytes > len(m) {
			return false
		}
		n := 0
		for i := 0; i < lenBytes; i++ {
			n = n<<8 | int(m[p+i])
		}
		p += lenBytes + n
		return p <= len(m)
	}
	if !skip(1) || !skip(2) || !skip(1) || p+2 > len(m) {
		return hello
	}
	extStart := p + 2
	var sni, others []byte
	for q := extStart; q+4 <= len(m); {
		n := int(m[q+2])<<8 | int(m[q+3])
		if q+4+n > len(m) {
			return hello
		}
		if m[q] == 0 && m[q+1] == 0 {
			sni = m[q : q+4+n]
		} else {
			others = append(others, m[q:q+4+n]...)
		}
		q += 4 + n
	}
	if sni == nil {
		return hello
	}
	out := append([]byte(nil), hello[:5+extStart]...)
	out = append(append(out, others...), sni...)
	return out
}

// reframe puts the handshake bytes of the TLS records in b into records of
// at most size bytes.
func reframe(b []byte, size int) []byte {
	var hs []byte
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
	}
	var out []byte
	for len(hs) > 0 {
		k := min(size, len(hs))
		out = append(out, 22, 3, 1, byte(k>>8), byte(k))
		out = append(out, hs[:k]...)
		hs = hs[k:]
	}
	return out
}

// helloWith is clientHello with the given key-exchange preferences.
func helloWith(serverName string, pq bool) ([]byte, error) {
	curves := []tls.CurveID{tls.X25519}
	if pq {
		curves = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
	}
	client, server := net.Pipe()
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := tls.Client(client, &tls.Config{ServerName: serverName, InsecureSkipVerify: true, CurvePreferences: curves})
		_ = c.Handshake()
		client.Close()
	}()
	_ = server.SetDeadline(time.Now().Add(5 * time.Second))
	hello, err := readHello(server)
	server.Close()
	<-done
	return hello, err
}

// Outcomes of one split-hello connection.
const (
	outRouted   = "routed right"
	outFallback = "fell to fallback"
	outWrong    = "WRONG pool"
	outClosed   = "closed"
	outCorrupt  = "bytes changed"
)

// helloBackend accepts connections, reads one whole ClientHello (records as
// they came), and answers "NAME LEN CRC" so the client can tell which pool
// the proxy chose and that the bytes arrived unchanged.
type helloBackend struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
}

func startHelloBackend(name string) (*helloBackend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &helloBackend{name: name, ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(15 * time.Second))
				h, err := readHello(c)
				if err != nil {
					// The deadline also bounds this write: move it.
					_ = c.SetDeadline(time.Now().Add(time.Second))
					fmt.Fprintf(c, "%s incomplete\n", b.name)
					return
				}
				fmt.Fprintf(c, "%s %d %08x\n", b.name, len(h), crc32.ChecksumIEEE(h))
			}()
		}
	}()
	return b, nil
}

func (b *helloBackend) addr() string { return b.ln.Addr().String() }

func (b *helloBackend) close() {
	b.ln.Close()
	b.wg.Wait()
}

// sendShaped connects to addr, sends hello shaped by s and returns the
// outcome and, for "closed", what happened.
func sendShaped(addr string, hello []byte, s helloShape, wantPool string) (string, string) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return outClosed, err.Error()
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	_ = tc.SetNoDelay(true)
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	wire, pieces := shapeWire(hello, s)
	for i, p := range pieces {
		if i > 0 {
			time.Sleep(s.Pause) // the shape's pause between segments
		}
		if _, err := tc.Write(p); err != nil {
			return outClosed, fmt.Sprintf("write after %d pieces: %v", i, err)
		}
	}
	sent := time.Now()
	reply, err := io.ReadAll(io.LimitReader(c, 256))
	line := strings.TrimSpace(string(reply))
	if line == "" {
		if err == nil {
			err = io.EOF
		}
		return outClosed, fmt.Sprintf("%v, %.1f s after the last byte sent", err, time.Since(sent).Seconds())
	}
	f := strings.Fields(line)
	switch {
	case len(f) == 2 && f[1] == "incomplete" && f[0] == "fallback":
		return outFallback, "the incomplete hello was forwarded to the fallback pool"
	case len(f) == 2 && f[1] == "incomplete":
		return outWrong, "the incomplete hello was forwarded to pool " + f[0]
	case len(f) != 3:
		return outCorrupt, line
	case f[1] != strconv.Itoa(len(wire)) || f[2] != fmt.Sprintf("%08x", crc32.ChecksumIEEE(wire)):
		return outCorrupt, line
	case f[0] == wantPool:
		return outRouted, ""
	case f[0] == "fallback":
		return outFallback, ""
	}
	return outWrong, f[0]
}

// splitConfig renders target name's configuration: a listener on port
// routing a.split.test to pool a, b.split.test to pool b, anything else to
// pool fallback, with a 10 s hello timeout.
func splitConfig(name string, port int, be map[string]string, dir string) string {
	switch name {
	case tHAProxy:
		return fmt.Sprintf(`# generated by lbbench splithello: HAProxy SNI routing as documented
global
    pidfile %s/haproxy.pid
defaults
    mode tcp
    timeout connect 3s
    timeout client 30s
    timeout server 30s
frontend split
    bind 127.0.0.1:%d
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend a if { req.ssl_sni -i a.split.test }
    use_backend b if { req.ssl_sni -i b.split.test }
    default_backend fallback
backend a
    server a %s
backend b
    server b %s
backend fallback
    server fallback %s
`, dir, port, be["a"], be["b"], be["fallback"])
	case tNginx:
		return fmt.Sprintf(`# generated by lbbench splithello: nginx ssl_preread SNI routing as documented
load_module %s;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/nginx-error.log info;
events { worker_connections 1024; }
stream {
    preread_timeout 10s;
    upstream a { server %s; }
    upstream b { server %s; }
    upstream fallback { server %s; }
    map $ssl_preread_server_name $split_upstream {
        a.split.test a;
        b.split.test b;
        default fallback;
    }
    server {
        listen 127.0.0.1:%d;
        ssl_preread on;
        proxy_pass $split_upstream;
    }
}
`, nginxModule, dir, dir, be["a"], be["b"], be["fallback"], port)
	default:
		return fmt.Sprintf(`# generated by lbbench splithello: lbctl routes
[log]
level = "warn"
access = false

[listeners.split]
bind = "127.0.0.1:%d"
pool = "fallback"
tls_inspect_timeout = "10s"
  [[listeners.split.routes]]
  sni = ["a.split.test"]
  pool = "a"
  [[listeners.split.routes]]
  sni = ["b.split.test"]
  pool = "b"

[pools.a]
  [[pools.a.backends]]
  address = "%s"
  [pools.a.health]
  check = "none"
[pools.b]
  [[pools.b.backends]]
  address = "%s"
  [pools.b.health]
  check = "none"
[pools.fallback]
  [[pools.fallback.backends]]
  address = "%s"
  [pools.fallback.health]
  check = "none"
`, port, be["a"], be["b"], be["fallback"])
	}
}

// splitResult is one shape against one target: outcomes for a.split.test
// and b.split.test.
type splitResult struct {
	Target, Shape string
	Outcomes      []string
	Details       []string
}

// runSplitHello is "lbbench splithello".
func runSplitHello(ctx context.Context, lbctlBin string, targets []string, out io.Writer) error {
	dir, err := os.MkdirTemp("", "lbbench-splithello-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	be := map[string]string{}
	for _, n := range []string{"a", "b", "fallback"} {
		b, err := startHelloBackend(n)
		if err != nil {
			return err
		}
		defer b.close()
		be[n] = b.addr()
	}
	hellos := map[bool]map[string][]byte{}
	for _, pq := range []bool{false, true} {
		hellos[pq] = map[string][]byte{}
		for _, name := range []string{"a.split.test", "b.split.test"} {
			h, err := helloWith(name, pq)
			if err != nil {
				return err
			}
			hellos[pq][name] = h
		}
	}
	var results []splitResult
	for _, tn := range targets {
		port, err := freePorts(1)
		if err != nil {
			return err
		}
		runDir := filepath.Join(dir, tn)
		if err := os.MkdirAll(runDir, 0o755); err != nil {
			return err
		}
		cfg := filepath.Join(runDir, "config")
		if err := os.WriteFile(cfg, []byte(splitConfig(tn, port[0], be, runDir)), 0o644); err != nil {
			return err
		}
		var argv []string
		switch tn {
		case tHAProxy:
			argv = []string{"haproxy", "-f", cfg, "-db"}
		case tNginx:
			argv = []string{"nginx", "-p", runDir, "-e", filepath.Join(runDir, "nginx-error.log"), "-c", cfg, "-g", "daemon off;"}
		case tLbctl:
			argv = []string{lbctlBin, "serve", "--config", cfg}
		default:
			return fmt.Errorf("splithello: target %q (want lbctl, haproxy, nginx)", tn)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port[0])
		t := &target{name: tn, argv: argv, log: filepath.Join(runDir, "log"),
			ready: func() error { return probeTCP(addr, false) }}
		if err := t.start(ctx); err != nil {
			fmt.Fprintf(out, "%s: not run: %v\n", tn, firstLine(err.Error()))
			continue
		}
		for _, s := range helloShapes {
			r := splitResult{Target: tn, Shape: s.Name}
			var wg sync.WaitGroup
			r.Outcomes, r.Details = make([]string, 2), make([]string, 2)
			for i, name := range []string{"a.split.test", "b.split.test"} {
				wg.Go(func() {
					r.Outcomes[i], r.Details[i] = sendShaped(addr, hellos[s.PQ][name], s, name[:1])
				})
			}
			wg.Wait()
			results = append(results, r)
		}
		t.stop()
	}
	printSplit(out, results, hellos)
	return nil
}

// printSplit writes one line per shape, one column per target.
func printSplit(out io.Writer, rs []splitResult, hellos map[bool]map[string][]byte) {
	fmt.Fprintf(out, "ClientHellos: classic %d bytes, post-quantum (X25519MLKEM768) %d bytes; each shape sent for a.split.test and b.split.test at once.\n\n",
		len(hellos[false]["a.split.test"]), len(hellos[true]["a.split.test"]))
	var targets []string
	for _, r := range rs {
		if !contains(targets, r.Target) {
			targets = append(targets, r.Target)
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "shape\t%s\n", strings.Join(targets, "\t"))
	for _, s := range helloShapes {
		cells := []string{s.Name}
		for _, tn := range targets {
			for _, r := range rs {
				if r.Target == tn && r.Shape == s.Name {
					cells = append(cells, summarize(r.Outcomes))
				}
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
	var notes bytes.Buffer
	for _, r := range rs {
		for i, d := range r.Details {
			if d != "" {
				fmt.Fprintf(&notes, "  %s, %s, %s: %s\n", r.Target, r.Shape, []string{"a", "b"}[i], d)
			}
		}
	}
	if notes.Len() > 0 {
		fmt.Fprintf(out, "\nDetails:\n%s", notes.String())
	}
}

// summarize is "routed right" when both names agree, else both outcomes.
func summarize(o []string) string {
	if o[0] == o[1] {
		return o[0]
	}
	return "a: " + o[0] + ", b: " + o[1]
}
