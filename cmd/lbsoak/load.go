package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// outcome counts one kind of work.
type outcome struct {
	ok      atomic.Int64 // verified end to end
	excused atomic.Int64 // cut by a killed backend: the design cannot save them
	failed  atomic.Int64 // anything else: lbctl's fault
	bytes   atomic.Int64 // payload verified by SHA-256 (both directions)
}

// ledger is the whole run's accounting: outcomes, and the first failures
// in words.
type ledger struct {
	long, short, udp outcome
	udpCorrupt       atomic.Int64
	mu               sync.Mutex
	notes            []string
	kills            []killEvent
}

// kind is a kind of backend, as the chaos loop picks them.
type kind int

const (
	kindTCP  kind = iota // pool "tcp"
	kindUDP              // pool "udp"
	kindLive             // pool "live"
)

type killEvent struct {
	kind     kind
	from, to time.Time // to is zero while the backend is down
}

const maxNotes = 20

func (l *ledger) note(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.notes) < maxNotes {
		l.notes = append(l.notes, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
}

// downDuring reports whether a backend of kind k was down at any moment
// between from and to.
func (l *ledger) downDuring(kd kind, from, to time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range l.kills {
		if k.kind == kd && k.from.Before(to) && (k.to.IsZero() || k.to.After(from)) {
			return true
		}
	}
	return false
}

func (l *ledger) killed(k kind, at time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kills = append(l.kills, killEvent{kind: k, from: at})
	return len(l.kills) - 1
}

func (l *ledger) restarted(i int, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kills[i].to = at
}

// streamResult is what one TCP stream saw.
type streamResult struct {
	tag    tag
	gotTag bool
	tagAt  time.Time // when the tag came: lbctl chose the backend before
	err    error     // transport error (reset, timeout)
	// corrupt: the stream ended cleanly with other bytes than were sent.
	// That is never excused: lbctl resets the client when a backend fails,
	// so a truncated stream can't pass for a complete one.
	corrupt string
}

// stream sends size pseudo-random bytes through addr to an echo backend,
// half-closes, and checks that exactly the same bytes come back.
func stream(addr string, size int64, seed uint64, timeout time.Duration) (r streamResult) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		r.err = err
		return r
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(timeout))

	var seedBytes [32]byte
	binary.LittleEndian.PutUint64(seedBytes[:], seed)
	sent := make(chan [32]byte, 1)
	werr := make(chan error, 1)
	go func() {
		rng := rand.NewChaCha8(seedBytes)
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for left := size; left > 0; {
			n := min(int64(len(buf)), left)
			rng.Read(buf[:n])
			h.Write(buf[:n])
			if _, err := tc.Write(buf[:n]); err != nil {
				werr <- err
				return
			}
			left -= n
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		sent <- sum
		werr <- tc.CloseWrite()
	}()

	var tb [tagLen]byte
	if _, err := io.ReadFull(tc, tb[:]); err != nil {
		tc.Close() // unblocks the writer
		<-werr
		r.err = fmt.Errorf("read tag: %w", err)
		return r
	}
	r.tag, r.gotTag, r.tagAt = parseTag(tb[:]), true, time.Now()
	h := sha256.New()
	n, err := io.Copy(h, tc)
	if err != nil {
		tc.Close()
		<-werr
		r.err = fmt.Errorf("read echo after %d bytes: %w", n, err)
		return r
	}
	if err := <-werr; err != nil {
		r.err = fmt.Errorf("write: %w", err)
		return r
	}
	var got [32]byte
	copy(got[:], h.Sum(nil))
	if want := <-sent; n != size || got != want {
		r.corrupt = fmt.Sprintf("sent %d bytes, received %d (sha256 match %v)", size, n, got == want)
	}
	return r
}

// tcpWorker runs streams of sizes in [lo, hi] until ctx is done.
func (s *soak) tcpWorker(ctx context.Context, o *outcome, kind string, lo, hi int64, timeout time.Duration, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	for ctx.Err() == nil {
		size := lo + rng.Int64N(hi-lo+1)
		start := time.Now()
		r := stream(s.tcpAddr, size, rng.Uint64(), timeout)
		switch {
		case r.corrupt != "":
			o.failed.Add(1)
			s.led.note("%s stream CORRUPT via %v: %s", kind, r.tag, r.corrupt)
		case r.err == nil:
			o.ok.Add(1)
			o.bytes.Add(2 * size)
		case r.gotTag && s.tcp[r.tag.id].killed(r.tag.gen):
			o.excused.Add(1)
		case !r.gotTag && s.led.downDuring(kindTCP, start, time.Now()):
			o.excused.Add(1)
		default:
			o.failed.Add(1)
			s.led.note("%s stream of %d bytes failed (backend %v, tag %v): %v", kind, size, r.tag, r.gotTag, r.err)
		}
	}
}

// udpWorker pings through lbctl's UDP listener, one datagram in flight,
// from a socket it replaces every few hundred datagrams (a new session).
func (s *soak) udpWorker(ctx context.Context, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	var c *net.UDPConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	buf := make([]byte, 65536)
	var seq uint64
	var last tag
	var lastAt time.Time
	for i := 0; ctx.Err() == nil; i++ {
		if c == nil || i%300 == 0 {
			if c != nil {
				c.Close()
			}
			ua, _ := net.ResolveUDPAddr("udp", s.udpAddr)
			var err error
			if c, err = net.DialUDP("udp", nil, ua); err != nil {
				s.led.udp.failed.Add(1)
				s.led.note("udp dial: %v", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			lastAt = time.Time{}
		}
		seq++
		payload := make([]byte, 8+rng.IntN(1400))
		binary.BigEndian.PutUint64(payload, seq)
		for j := 8; j < len(payload); j++ {
			payload[j] = byte(rng.Uint32())
		}
		sentAt := time.Now()
		if _, err := c.Write(payload); err != nil {
			// ECONNREFUSED from lbctl's socket is impossible; treat any
			// error as lost and let the excuse rules decide.
			s.lostDatagram(sentAt, last, lastAt, err)
			continue
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				s.lostDatagram(sentAt, last, lastAt, err)
				break
			}
			if n < 8+tagLen || binary.BigEndian.Uint64(buf) != seq {
				continue // a late reply to an earlier datagram
			}
			reply := buf[:n-tagLen]
			if !bytes.Equal(reply, payload) {
				s.led.udpCorrupt.Add(1)
				s.led.note("udp reply CORRUPT: %d bytes for %d sent", len(reply), len(payload))
				break
			}
			last, lastAt = parseTag(buf[n-tagLen:n]), time.Now()
			s.led.udp.ok.Add(1)
			s.led.udp.bytes.Add(int64(2 * len(payload)))
			break
		}
	}
}

// lostDatagram classifies a datagram without a reply: excused when the
// session's backend was killed since its last reply, or a UDP backend was
// down meanwhile (a new session may have picked it before lbctl saw it
// fail).
func (s *soak) lostDatagram(sentAt time.Time, last tag, lastAt time.Time, err error) {
	from := sentAt
	if !lastAt.IsZero() {
		from = lastAt
	}
	if (!lastAt.IsZero() && s.udp[last.id].killed(last.gen)) || s.led.downDuring(kindUDP, from, time.Now()) {
		s.led.udp.excused.Add(1)
		return
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = errors.New("no reply within 2s")
	}
	s.led.udp.failed.Add(1)
	s.led.note("udp datagram lost: %v", err)
}
