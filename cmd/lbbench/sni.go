package main

// sni.go: the SNI-routed short connection measure. Each connection sends a
// real TLS ClientHello (made once by Go's crypto/tls client, so every proxy
// parses a hello a browser could send) in one write, reads it back from an
// echo backend, and closes. The proxies route by the hello's server name:
// lbctl with routes, HAProxy with req.ssl_sni, nginx with ssl_preread. No
// TLS is terminated anywhere, so the figure is the cost of inspection and
// routing on top of a plain short connection.

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// sniNames are the server names the proxies route: each to its own pool
// (sni_a, sni_b) of the echo backends. Connections alternate between them.
var sniNames = []string{"a.bench.test", "b.bench.test"}

// clientHello returns the TLS records of the ClientHello Go's client sends
// for serverName, as it writes them (one write).
func clientHello(serverName string) ([]byte, error) {
	client, server := net.Pipe()
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := tls.Client(client, &tls.Config{ServerName: serverName, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		_ = c.Handshake() // fails once the server end closes
		client.Close()
	}()
	_ = server.SetDeadline(time.Now().Add(5 * time.Second))
	hello, err := readHello(server)
	server.Close()
	<-done
	return hello, err
}

// readHello reads TLS handshake records from r until they hold a whole
// ClientHello and returns those records.
func readHello(r io.Reader) ([]byte, error) {
	var recs, msg []byte
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, fmt.Errorf("read ClientHello record: %w", err)
		}
		if hdr[0] != 22 {
			return nil, fmt.Errorf("record type %d, want handshake (22)", hdr[0])
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(r, body); err != nil {
			return nil, fmt.Errorf("read ClientHello record: %w", err)
		}
		recs = append(append(recs, hdr[:]...), body...)
		msg = append(msg, body...)
		if len(msg) >= 4 {
			if msg[0] != 1 {
				return nil, errors.New("first handshake message is not a ClientHello")
			}
			if need := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])); len(msg) >= need {
				return recs, nil
			}
		}
	}
}

// sniHellos makes one ClientHello per name of sniNames.
func sniHellos() ([][]byte, error) {
	var hs [][]byte
	for _, n := range sniNames {
		h, err := clientHello(n)
		if err != nil {
			return nil, fmt.Errorf("make a ClientHello for %s: %w", n, err)
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// measureSNI is measureShort with a ClientHello for the request: workers
// loop connect, write the hello (one write: no splitting in this measure),
// read its echo, close. Worker i starts with hello i, and each worker
// alternates, so both routes carry the same load.
func measureSNI(addrs []string, hellos [][]byte, workers int, w window) latencyResult {
	rot := &rotor{addrs: addrs}
	return runLatencyWorkers(workers, w, func(i int, h *Histogram) (uint64, int) {
		longest := 0
		for _, hl := range hellos {
			longest = max(longest, len(hl))
		}
		resp := make([]byte, longest)
		d := net.Dialer{Timeout: 3 * time.Second}
		var n uint64
		errs := 0
		for k := i; ; k++ {
			t0 := time.Now()
			if !t0.Before(w.end) {
				return n, errs
			}
			hello := hellos[k%len(hellos)]
			if err := shortExchange(&d, rot.pick(), t0, hello, resp[:len(hello)]); err != nil {
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

// probeSNI sends hello and waits for its echo: the SNI listener answers
// only once it has routed a whole ClientHello.
func probeSNI(addr string, hello []byte) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(hello); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, len(hello)))
	return err
}
