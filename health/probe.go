package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kind names a check type, as written in the config key check.
type Kind string

// The check kinds. KindNone means "no active checks": NewProber refuses it and
// Checker.Set treats it as Remove.
const (
	KindTCP        Kind = "tcp"
	KindHTTP       Kind = "http"
	KindTLS        Kind = "tls"
	KindHTTPS      Kind = "https"
	KindSendExpect Kind = "send-expect"
	KindNone       Kind = "none"
)

const (
	defaultInterval = 2 * time.Second
	defaultTimeout  = time.Second
	defaultRise     = 2
	defaultFall     = 3
	defaultPath     = "/"

	// maxHTTPHead bounds what an HTTP check reads: the status line (and the
	// headers of any 1xx interim responses before it). Bodies are never read.
	maxHTTPHead = 4 << 10
	// maxExpectRead bounds what a send-expect check reads looking for Expect,
	// over TCP in total and over UDP per datagram.
	maxExpectRead = 64 << 10
	// userAgent is sent with every HTTP check.
	userAgent = "lbctl-health"
)

// Errors a check can return, for errors.Is. Network errors (refused, reset,
// i/o timeout) are returned as the net package reports them.
var (
	// ErrExpectNotSeen: a send-expect check read what it could (until EOF,
	// the timeout or the read bound) without seeing Spec.Expect.
	ErrExpectNotSeen = errors.New("expect not seen")
	// ErrNoProber: the spec's Kind is "none" (or empty), so there is nothing
	// to probe.
	ErrNoProber = errors.New("no active check for kind none")
)

// StatusError is returned by an HTTP check when the status code is not one
// the spec accepts. Its text is "HTTP 500", which is also what a transition
// reports as its reason.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return "HTTP " + strconv.Itoa(e.Code) }

// Spec describes one target's check: what to probe (Kind and its fields) and
// how often and how patiently (Interval, Timeout, Rise, Fall). Zero values
// take lbctl's defaults: Interval 2s, Timeout 1s, Rise 2, Fall 3, Path "/",
// Network "tcp", StatusOK any 2xx or 3xx code.
type Spec struct {
	Kind Kind

	// Network is the transport of a send-expect check: "tcp" (default) or
	// "udp" ("tcp4", "tcp6", "udp4", "udp6" also work). tcp and http checks
	// always use TCP.
	Network string

	Interval time.Duration // time between the starts of two checks
	Timeout  time.Duration // bound on one whole check, dial included
	Rise     int           // consecutive successes that mark a down target up
	Fall     int           // consecutive failures that mark an up target down

	// Port, when not 0, is checked on the target's host instead of the
	// port of the address given to Probe (the traffic port).
	Port int

	// HTTP and HTTPS: the request is "GET Path HTTP/1.1" with a Host header
	// of Host; when Host is empty, of ServerName (HTTPS with a ServerName)
	// or else of the checked address. StatusOK decides which status codes
	// are a success; see StatusRange and StatusCodes.
	Path     string
	Host     string
	StatusOK func(code int) bool

	// TLS and HTTPS: ServerName is the server name indication the
	// ClientHello carries; "" sends none. It must be a host name: SNI
	// cannot carry an IP address (RFC 6066). The certificate is never
	// verified: the check asks whether the backend speaks TLS, not whether
	// it is trusted.
	ServerName string

	// Send-expect: Send is written once after connecting (over UDP: as one
	// datagram, so it must not be empty); the check succeeds as soon as the
	// bytes read so far (over UDP: one reply datagram) contain Expect.
	Send   []byte
	Expect []byte
}

// StatusRange returns a StatusOK func accepting codes in [lo, hi], for
// example StatusRange(200, 299) for "any 2xx".
func StatusRange(lo, hi int) func(code int) bool {
	return func(code int) bool { return lo <= code && code <= hi }
}

// StatusCodes returns a StatusOK func accepting exactly the given codes.
func StatusCodes(codes ...int) func(code int) bool {
	codes = slices.Clone(codes)
	return func(code int) bool { return slices.Contains(codes, code) }
}

// Prober runs one check. Probe dials addr (host:port, the backend's traffic
// address; a Spec.Port overrides the port), does the check and closes every
// connection it opened before returning. It returns nil when the backend is
// healthy. It returns within the prober's timeout, or sooner when ctx ends.
// A Prober is safe for concurrent use.
type Prober interface {
	Probe(ctx context.Context, addr string) error
}

// withDefaults fills the zero fields of s with lbctl's defaults.
func (s Spec) withDefaults() Spec {
	if s.Interval == 0 {
		s.Interval = defaultInterval
	}
	if s.Timeout == 0 {
		s.Timeout = defaultTimeout
	}
	if s.Rise == 0 {
		s.Rise = defaultRise
	}
	if s.Fall == 0 {
		s.Fall = defaultFall
	}
	if (s.Kind == KindHTTP || s.Kind == KindHTTPS) && s.Path == "" {
		s.Path = defaultPath
	}
	if s.Kind == KindSendExpect && s.Network == "" {
		s.Network = "tcp"
	}
	if s.StatusOK == nil {
		s.StatusOK = StatusRange(200, 399)
	}
	return s
}

// validate checks a spec that went through withDefaults.
func (s Spec) validate() error {
	switch {
	case s.Interval < 0:
		return fmt.Errorf("interval %v: must be positive", s.Interval)
	case s.Timeout < 0:
		return fmt.Errorf("timeout %v: must be positive", s.Timeout)
	case s.Rise < 0:
		return fmt.Errorf("rise %d: must be at least 1", s.Rise)
	case s.Fall < 0:
		return fmt.Errorf("fall %d: must be at least 1", s.Fall)
	case s.Port < 0 || s.Port > 65535:
		return fmt.Errorf("port %d: must be 0 (the traffic port) or 1-65535", s.Port)
	}
	switch s.Kind {
	case KindTCP:
	case KindTLS, KindHTTP, KindHTTPS:
		if s.ServerName != "" && !validServerName(s.ServerName) {
			return fmt.Errorf("server name %q: must be a host name (letters, digits, '-', '.'), not an IP address", s.ServerName)
		}
		if s.Kind == KindTLS {
			break
		}
		if !strings.HasPrefix(s.Path, "/") || strings.ContainsFunc(s.Path, badRequestRune) {
			return fmt.Errorf("path %q: must start with / and contain no spaces or control characters", s.Path)
		}
		if strings.ContainsFunc(s.Host, badRequestRune) {
			return fmt.Errorf("host %q: must contain no spaces or control characters", s.Host)
		}
	case KindSendExpect:
		switch s.Network {
		case "tcp", "tcp4", "tcp6":
		case "udp", "udp4", "udp6":
			if len(s.Send) == 0 {
				return errors.New("send: must not be empty for a UDP send-expect check")
			}
		default:
			return fmt.Errorf("network %q: must be tcp or udp", s.Network)
		}
		if len(s.Expect) == 0 {
			return errors.New("expect: must not be empty")
		}
		if len(s.Expect) > maxExpectRead {
			return fmt.Errorf("expect: longer than the %d bytes a check reads", maxExpectRead)
		}
	case KindNone, "":
		return ErrNoProber
	default:
		return fmt.Errorf("check %q: must be tcp, http, tls, https, send-expect or none", s.Kind)
	}
	return nil
}

func badRequestRune(r rune) bool { return r <= ' ' || r == 0x7f }

// ServerNameOf returns the host of hostport ("api.internal:443",
// "api.internal", "[::1]:443") when it can be sent as SNI, and "" when it
// cannot (an IP address, a malformed name). Callers use it to derive a
// check's default Spec.ServerName from a backend's or a Host's name.
func ServerNameOf(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if !validServerName(host) {
		return ""
	}
	return host
}

// validServerName reports whether name can be sent as SNI: a DNS host name
// of at most 253 bytes made of letters, digits, '-', '_' and dots, with no
// empty label, and not an IP address.
func validServerName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// NewProber validates s and returns the Prober it describes. Zero fields take
// the defaults listed on Spec; Interval, Rise and Fall are validated but not
// used by the Prober itself.
func NewProber(s Spec) (Prober, error) {
	s = s.withDefaults()
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("health check: %w", err)
	}
	p := &prober{network: "tcp", timeout: s.Timeout, port: s.Port}
	switch s.Kind {
	case KindTCP:
		p.converse = func(net.Conn, string) error { return nil }
	case KindHTTP:
		h := httpCheck{path: s.Path, host: s.Host, ok: s.StatusOK}
		p.converse = h.converse
	case KindTLS:
		p.converse = tlsCheck{config: tlsConfig(s.ServerName)}.converse
	case KindHTTPS:
		host := s.Host
		if host == "" {
			host = s.ServerName
		}
		h := httpCheck{path: s.Path, host: host, ok: s.StatusOK}
		cfg := tlsConfig(s.ServerName)
		cfg.NextProtos = []string{"http/1.1"}
		p.converse = tlsCheck{config: cfg, then: h.converse}.converse
	case KindSendExpect:
		p.network = s.Network
		se := sendExpect{send: bytes.Clone(s.Send), expect: bytes.Clone(s.Expect)}
		p.converse = se.stream
		if strings.HasPrefix(s.Network, "udp") {
			p.converse = se.datagram
		}
	}
	return p, nil
}

// prober is the one Prober implementation: dial, then converse.
type prober struct {
	network string
	timeout time.Duration
	port    int // 0: the port of the address given to Probe
	// converse runs the check's exchange on a connected conn whose deadline
	// is already set; addr is the address that was dialled.
	converse func(conn net.Conn, addr string) error
}

// pastDeadline makes every pending and future I/O on a conn fail at once.
var pastDeadline = time.Unix(1, 0)

func (p *prober) Probe(ctx context.Context, addr string) error {
	if p.port != 0 {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("health check address %q: %w", addr, err)
		}
		addr = net.JoinHostPort(host, strconv.Itoa(p.port))
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	var d net.Dialer
	conn, err := d.DialContext(ctx, p.network, addr)
	if err != nil {
		return err // a *net.OpError: "dial tcp ADDR: connect: connection refused"
	}
	defer conn.Close()
	// The context deadline bounds the dial; connection deadlines bound the
	// exchange, and AfterFunc cuts it short when ctx is cancelled early
	// (Checker.Remove/Stop).
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(pastDeadline) })
	defer stop()
	return p.converse(conn, addr)
}

// tlsConfig is the client configuration of tls and https checks: SNI as
// given, no certificate verification (a backend with a self-signed or
// expired certificate still speaks TLS), every version Go's client still
// offers, and a full handshake each time (no session cache), so each check
// exercises the backend's key and certificate.
func tlsConfig(serverName string) *tls.Config {
	return &tls.Config{
		ServerName:         strings.ToLower(serverName),
		InsecureSkipVerify: true,
		MinVersion:         tls.VersionTLS10,
	}
}

// tlsCheck completes a TLS handshake on the connection, then runs then (if
// any) over the TLS connection, and ends with a close_notify so that the
// backend sees an orderly close rather than a reset or a truncated stream.
type tlsCheck struct {
	config *tls.Config // shared by every check of this prober; never modified
	then   func(conn net.Conn, addr string) error
}

func (c tlsCheck) converse(conn net.Conn, addr string) error {
	tc := tls.Client(conn, c.config)
	// The raw connection's deadline (set by Probe) bounds the handshake.
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	var err error
	if c.then != nil {
		err = c.then(tc, addr)
	}
	tc.Close() // close_notify, then the raw connection (Probe's Close is then a no-op)
	return err
}

// httpCheck is a hand-rolled minimal HTTP/1.1 client: one request with
// Connection: close, then the status line is read and judged. Reading stops
// after the status line, so a backend streaming a large body costs nothing.
type httpCheck struct {
	path, host string
	ok         func(code int) bool
}

func (h httpCheck) converse(conn net.Conn, addr string) error {
	host := h.host
	if host == "" {
		host = addr
	}
	req := "GET " + h.path + " HTTP/1.1\r\n" +
		"Host: " + host + "\r\n" +
		"User-Agent: " + userAgent + "\r\n" +
		"Accept: */*\r\n" +
		"Connection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fmt.Errorf("send HTTP request: %w", err)
	}
	r := textproto.NewReader(bufio.NewReaderSize(io.LimitReader(conn, maxHTTPHead), 512))
	for {
		line, err := r.ReadLine()
		if err != nil {
			return fmt.Errorf("read HTTP status: %w", eofIsUnexpected(err))
		}
		code, err := parseStatusLine(line)
		if err != nil {
			return err
		}
		// 1xx responses other than 101 are interim (100 Continue, 103 Early
		// Hints): skip their headers and read the final status line.
		if code >= 100 && code < 200 && code != 101 {
			if _, err := r.ReadMIMEHeader(); err != nil {
				return fmt.Errorf("read HTTP %d interim headers: %w", code, eofIsUnexpected(err))
			}
			continue
		}
		if !h.ok(code) {
			return &StatusError{Code: code}
		}
		return nil
	}
}

// parseStatusLine returns the code of "HTTP/1.1 200 OK".
func parseStatusLine(line string) (int, error) {
	proto, rest, _ := strings.Cut(line, " ")
	codeText, _, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeText)
	if !strings.HasPrefix(proto, "HTTP/") || len(codeText) != 3 || err != nil || code < 100 {
		return 0, fmt.Errorf("malformed HTTP status line %.64q", line)
	}
	return code, nil
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// sendExpect writes send and looks for expect in what comes back.
type sendExpect struct {
	send, expect []byte
}

// stream is the TCP exchange: expect may arrive split over several reads, so
// the search runs over everything read so far (at most maxExpectRead bytes),
// starting each time where a new match could begin.
func (se sendExpect) stream(conn net.Conn, _ string) error {
	if len(se.send) > 0 {
		if _, err := conn.Write(se.send); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	buf := make([]byte, 0, 512)
	for {
		if len(buf) >= maxExpectRead {
			return fmt.Errorf("%w in the first %d bytes", ErrExpectNotSeen, len(buf))
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf))
		}
		n, err := conn.Read(buf[len(buf):min(cap(buf), maxExpectRead)])
		from := max(0, len(buf)-len(se.expect)+1)
		buf = buf[:len(buf)+n]
		if bytes.Contains(buf[from:], se.expect) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w after %s: %w", ErrExpectNotSeen, byteCount(len(buf)), err)
		}
	}
}

// byteCount is "1 byte" or "N bytes".
func byteCount(n int) string {
	if n == 1 {
		return "1 byte"
	}
	return fmt.Sprintf("%d bytes", n)
}

// datagramBufs holds the receive buffers of UDP checks, which must be large
// enough for any datagram but are needed only for the length of one check.
var datagramBufs = sync.Pool{New: func() any { b := make([]byte, maxExpectRead); return &b }}

// datagram is the UDP exchange on a connected socket: one datagram out, then
// replies are read until one contains expect. Stray replies are skipped. An
// ICMP port unreachable comes back as ECONNREFUSED from Read and fails the
// check at once instead of waiting for the timeout.
func (se sendExpect) datagram(conn net.Conn, _ string) error {
	if _, err := conn.Write(se.send); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	bp := datagramBufs.Get().(*[]byte)
	defer datagramBufs.Put(bp)
	buf := *bp
	for {
		n, err := conn.Read(buf)
		if bytes.Contains(buf[:n], se.expect) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrExpectNotSeen, err)
		}
	}
}
