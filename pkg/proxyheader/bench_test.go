package proxyheader

import (
	"bufio"
	"io"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// The cost of reading a header off a connection: Read (peek, then read
// exactly the header) against go-proxyproto's own way (a bufio.Reader,
// which leaves the payload that came with the header in its buffer, to be
// forwarded by hand before splicing could start). One header and 100 bytes
// of payload per iteration, on one loopback connection.
//
//	go test -run '^$' -bench Read ./pkg/proxyheader

func benchHeaderRead(b *testing.B, read func(c io.Reader) error, conn func() (w io.Writer, r io.Reader)) {
	w, r := conn()
	msg := append(AppendV2(nil, v6src, v6dst, false), make([]byte, 100)...)
	payload := make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Write(msg); err != nil {
			b.Fatal(err)
		}
		if err := read(r); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadPeek(b *testing.B) {
	client, server := pair(b)
	benchHeaderRead(b, func(io.Reader) error {
		_, err := Read(server, time.Now().Add(time.Second))
		return err
	}, func() (io.Writer, io.Reader) { return client, server })
}

func BenchmarkReadBufio(b *testing.B) {
	client, server := pair(b)
	br := bufio.NewReader(server)
	benchHeaderRead(b, func(io.Reader) error {
		server.SetReadDeadline(time.Now().Add(time.Second))
		_, err := proxyproto.Read(br)
		return err
	}, func() (io.Writer, io.Reader) { return client, br })
}
