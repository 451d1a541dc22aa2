package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// msgSize is the request and the reply size of the small-message measures.
const msgSize = 64

// window is the time frame of one timed measure: workers run from start to
// end, and only what happens between warm and end is counted, so connection
// set-up and filling the socket buffers stay out of the figures.
type window struct {
	start, warm, end time.Time
}

func newWindow(now time.Time, warmup, measure time.Duration) window {
	return window{start: now, warm: now.Add(warmup), end: now.Add(warmup + measure)}
}

// seconds is the length of the counted part.
func (w window) seconds() float64 { return w.end.Sub(w.warm).Seconds() }

// counted reports whether an event finishing at t falls in the counted part.
func (w window) counted(t time.Time) bool { return !t.Before(w.warm) && t.Before(w.end) }

// rotor hands out addresses round-robin: the direct target balances in the
// client, proxies get a single address.
type rotor struct {
	mu    sync.Mutex
	addrs []string
	next  int
}

func (r *rotor) pick() string {
	r.mu.Lock()
	a := r.addrs[r.next%len(r.addrs)]
	r.next++
	r.mu.Unlock()
	return a
}

// bulkResult is measure 1.
type bulkResult struct {
	Bytes   int64
	Seconds float64
	Errors  int
}

// Gbps is the counted throughput in Gbit/s.
func (r bulkResult) Gbps() float64 { return float64(r.Bytes) * 8 / r.Seconds / 1e9 }

// measureBulk opens streams connections and writes as fast as it can until
// w.end, counting the bytes whose write completed inside the counted part.
func measureBulk(addrs []string, streams int, w window) bulkResult {
	rot := &rotor{addrs: addrs}
	var (
		mu  sync.Mutex
		res = bulkResult{Seconds: w.seconds()}
		wg  sync.WaitGroup
	)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := bulkStream(rot.pick(), w)
			mu.Lock()
			res.Bytes += n
			if err != nil {
				res.Errors++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return res
}

func bulkStream(addr string, w window) (int64, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.SetWriteDeadline(w.end); err != nil {
		return 0, err
	}
	buf := make([]byte, 128<<10)
	var counted int64
	for {
		n, err := c.Write(buf)
		now := time.Now()
		if w.counted(now) || (err != nil && !now.Before(w.warm)) {
			counted += int64(n)
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return counted, nil
			}
			return counted, err
		}
		if !now.Before(w.end) {
			return counted, nil
		}
	}
}

// latencyResult is a count of exchanges and their latency distribution.
type latencyResult struct {
	Count   uint64
	Seconds float64
	Errors  int
	Hist    *Histogram
}

// Rate is exchanges per second in the counted part.
func (r latencyResult) Rate() float64 { return float64(r.Count) / r.Seconds }

func (r latencyResult) us(q float64) float64 {
	return float64(r.Hist.Quantile(q)) / 1e3
}

func runLatencyWorkers(workers int, w window, work func(i int, h *Histogram) (uint64, int)) latencyResult {
	hs := make([]Histogram, workers)
	counts := make([]uint64, workers)
	errs := make([]int, workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i], errs[i] = work(i, &hs[i])
		}()
	}
	wg.Wait()
	res := latencyResult{Seconds: w.seconds(), Hist: new(Histogram)}
	for i := range hs {
		res.Hist.Merge(&hs[i])
		res.Count += counts[i]
		res.Errors += errs[i]
	}
	return res
}

// measureShort runs workers that each loop: connect, send 64 bytes, read the
// 64-byte echo, close. The latency is from the start of the connect to the
// last byte of the reply.
func measureShort(addrs []string, workers int, w window) latencyResult {
	rot := &rotor{addrs: addrs}
	return runLatencyWorkers(workers, w, func(_ int, h *Histogram) (uint64, int) {
		req := make([]byte, msgSize)
		resp := make([]byte, msgSize)
		d := net.Dialer{Timeout: 3 * time.Second}
		var n uint64
		errs := 0
		for {
			t0 := time.Now()
			if !t0.Before(w.end) {
				return n, errs
			}
			if err := shortExchange(&d, rot.pick(), t0, req, resp); err != nil {
				errs++
				if errs > 1000 {
					return n, errs
				}
				continue
			}
			t1 := time.Now()
			if !t0.Before(w.warm) && t1.Before(w.end) {
				h.Record(t1.Sub(t0))
				n++
			}
		}
	})
}

func shortExchange(d *net.Dialer, addr string, t0 time.Time, req, resp []byte) error {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(t0.Add(3 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err = io.ReadFull(c, resp)
	return err
}

// measureRR opens conns persistent connections; each sends a 64-byte
// request and waits for the 64-byte reply, over and over.
func measureRR(addrs []string, conns int, w window) latencyResult {
	rot := &rotor{addrs: addrs}
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.DialTimeout("tcp", rot.pick(), 3*time.Second)
		if err != nil {
			for _, c := range cs[:i] {
				c.Close()
			}
			return latencyResult{Seconds: w.seconds(), Errors: 1, Hist: new(Histogram)}
		}
		cs[i] = c
	}
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	return runLatencyWorkers(conns, w, func(i int, h *Histogram) (uint64, int) {
		c := cs[i]
		if err := c.SetDeadline(w.end.Add(3 * time.Second)); err != nil {
			return 0, 1
		}
		req := make([]byte, msgSize)
		resp := make([]byte, msgSize)
		var n uint64
		for {
			t0 := time.Now()
			if !t0.Before(w.end) {
				return n, 0
			}
			if _, err := c.Write(req); err != nil {
				return n, 1
			}
			if _, err := io.ReadFull(c, resp); err != nil {
				return n, 1
			}
			t1 := time.Now()
			if !t0.Before(w.warm) && t1.Before(w.end) {
				h.Record(t1.Sub(t0))
				n++
			}
		}
	})
}

// udpTimeout is how long a UDP worker waits for a reply before counting the
// datagram as lost and sending the next.
const udpTimeout = 200 * time.Millisecond

// measureUDP runs workers with one connected UDP socket each, one datagram
// in flight per socket. Every request carries a sequence number so that a
// late reply to a lost-and-resent request is not mistaken for the current one.
func measureUDP(addrs []string, workers int, w window) (latencyResult, uint64) {
	rot := &rotor{addrs: addrs}
	var (
		lostMu sync.Mutex
		lost   uint64
	)
	res := runLatencyWorkers(workers, w, func(_ int, h *Histogram) (uint64, int) {
		c, err := net.Dial("udp", rot.pick())
		if err != nil {
			return 0, 1
		}
		defer c.Close()
		req := make([]byte, msgSize)
		resp := make([]byte, 2048)
		var n, l, seq uint64
		defer func() {
			lostMu.Lock()
			lost += l
			lostMu.Unlock()
		}()
		for {
			t0 := time.Now()
			if !t0.Before(w.end) {
				return n, 0
			}
			seq++
			binary.LittleEndian.PutUint64(req, seq)
			if _, err := c.Write(req); err != nil {
				l++
				continue
			}
			if err := c.SetReadDeadline(t0.Add(udpTimeout)); err != nil {
				return n, 1
			}
			for {
				m, err := c.Read(resp)
				if err != nil {
					if !t0.Before(w.warm) {
						l++
					}
					break
				}
				if m == msgSize && binary.LittleEndian.Uint64(resp) == seq {
					t1 := time.Now()
					if !t0.Before(w.warm) && t1.Before(w.end) {
						h.Record(t1.Sub(t0))
						n++
					}
					break
				}
			}
		}
	})
	return res, lost
}

// idleResult is measure 4.
type idleResult struct {
	Wanted      int    `json:"wanted"`
	Established int    `json:"established"`
	RSSBefore   int64  `json:"rss_before"` // bytes, the proxy process tree
	RSSAfter    int64  `json:"rss_after"`
	FDsBefore   int    `json:"fds_before"`
	FDsAfter    int    `json:"fds_after"`
	Err         string `json:"error,omitempty"`
}

// RSSPerConnKiB is the growth of the proxy's resident memory per idle
// connection.
func (r idleResult) RSSPerConnKiB() float64 {
	if r.Established == 0 {
		return 0
	}
	return float64(r.RSSAfter-r.RSSBefore) / 1024 / float64(r.Established)
}

// FDsPerConn is the growth of the proxy's open descriptors per connection.
func (r idleResult) FDsPerConn() float64 {
	if r.Established == 0 {
		return 0
	}
	return float64(r.FDsAfter-r.FDsBefore) / float64(r.Established)
}

// measureIdle opens n connections, proves each reaches a backend with a
// one-byte echo (which also starts any splice the proxy does), and samples
// the proxy with snap before and after. The connections are closed before it
// returns. It gives up after limit.
func measureIdle(addr string, n int, limit time.Duration, snap func() (rss int64, fds int, err error)) idleResult {
	res := idleResult{Wanted: n}
	var err error
	if res.RSSBefore, res.FDsBefore, err = snap(); err != nil {
		res.Err = err.Error()
		return res
	}
	deadline := time.Now().Add(limit)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	const dialers = 32
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		failures int
		firstErr error
	)
	next := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		next <- struct{}{}
	}
	close(next)
	for i := 0; i < dialers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := []byte{'i'}
			back := make([]byte, 1)
			for range next {
				mu.Lock()
				stop := failures > 50 || time.Now().After(deadline)
				mu.Unlock()
				if stop {
					return
				}
				c, err := idleOpen(addr, deadline, one, back)
				mu.Lock()
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Established = len(conns)
	if firstErr != nil {
		res.Err = fmt.Sprintf("%d failed connections, first: %v", failures, firstErr)
	}
	if res.RSSAfter, res.FDsAfter, err = snap(); err != nil && res.Err == "" {
		res.Err = err.Error()
	}
	return res
}

func idleOpen(addr string, deadline time.Time, one, back []byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := c.Write(one); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, back); err != nil {
		c.Close()
		return nil, fmt.Errorf("no echo through %s: %w", addr, err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
