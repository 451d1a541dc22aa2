package tlshello

import (
	"testing"
	"time"

	"github.com/lbctl/lbctl/tlshello/tlshellotest"
)

// BenchmarkRead reads and parses a post-quantum ClientHello (one record,
// about 1.5 KB) from memory: the CPU and allocations routing adds to a
// connection, beside the syscalls.
//
//	go test -run '^$' -bench . -benchmem ./tlshello
func BenchmarkRead(b *testing.B) {
	hello := captureHello(b, pqConfig("api.example.com"))
	conn := &scripted{}
	b.SetBytes(int64(len(hello)))
	b.ReportAllocs()
	for b.Loop() {
		conn.chunks = append(conn.chunks[:0], hello)
		h, err := Read(conn, time.Time{})
		if err != nil || h.ServerName != "api.example.com" {
			b.Fatal(h, err)
		}
	}
}

// BenchmarkReadSplit is BenchmarkRead with the hello in records of 100
// bytes (reassembled: one more copy).
func BenchmarkReadSplit(b *testing.B) {
	hello := tlshellotest.Reframe(captureHello(b, pqConfig("api.example.com")), 100)
	conn := &scripted{}
	b.ReportAllocs()
	for b.Loop() {
		conn.chunks = append(conn.chunks[:0], hello)
		if _, err := Read(conn, time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}
