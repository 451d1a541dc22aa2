package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestProcNetCounter reads a counter by name from the protocol's two
// lines (names, then values), and -1 for a missing counter, protocol or
// file; the real /proc files have the counters lbsoak reports.
func TestProcNetCounter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snmp")
	snmp := "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams RcvbufErrors\nUdp: 10 7\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 99\n"
	if err := os.WriteFile(path, []byte(snmp), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		proto, name string
		want        int64
	}{
		{"Udp:", "RcvbufErrors", 7},
		{"UdpLite:", "RcvbufErrors", 99},
		{"Udp:", "NoPorts", -1},
		{"Tcp:", "RcvbufErrors", -1},
	} {
		if got := procNetCounter(path, c.proto, c.name); got != c.want {
			t.Errorf("%s %s = %d, want %d", c.proto, c.name, got, c.want)
		}
	}
	if got := procNetCounter(filepath.Join(t.TempDir(), "none"), "Udp:", "RcvbufErrors"); got != -1 {
		t.Errorf("missing file: %d, want -1", got)
	}
	if n := udpRcvbufErrors(); n < 0 {
		t.Errorf("udpRcvbufErrors() = %d from /proc/net/snmp", n)
	}
	if n := tcpExt("ListenOverflows"); n < 0 {
		t.Errorf("tcpExt(ListenOverflows) = %d from /proc/net/netstat", n)
	}
}
