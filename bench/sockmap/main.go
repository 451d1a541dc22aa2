// Command sockmap-probe measures the in-kernel path that issue 14 proposed
// for TCP: a proxy whose two sockets of each connection sit in a
// BPF_MAP_TYPE_SOCKHASH with an sk_skb verdict program that redirects
// every byte a socket receives to its peer's send side, so no byte passes
// through user space. It is a measuring tool, not part of lbctl: see
// docs/benchmarks.md, "11. The in-kernel path, measured".
//
//	sockmap-probe proxy -listen 127.0.0.1:9400 -backend 127.0.0.1:PORT
//	sockmap-probe flood [-seconds 3]
//
// proxy serves connections until killed. flood starts a backend that never
// reads and the proxy in front of it, writes to the proxy for a few
// seconds, and reports how much the kernel took from the client and how
// much memory the machine lost meanwhile: the egress redirect has no
// back-pressure toward the client.
//
// Needs root (CAP_BPF and CAP_NET_ADMIN) and a kernel with
// BPF_SK_SKB_VERDICT (5.13 or newer). IPv4 and IPv6 alike: the program
// keys sockets by their cookie, not by address.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "proxy":
		fs := flag.NewFlagSet("proxy", flag.ExitOnError)
		listen := fs.String("listen", "127.0.0.1:9400", "address to listen on")
		backend := fs.String("backend", "", "backend address")
		fs.Parse(os.Args[2:])
		if *backend == "" {
			usage()
		}
		k, err := newKernelPath()
		if err != nil {
			log.Fatal(err)
		}
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatal(err)
		}
		log.Fatal(k.serve(ln, *backend))
	case "flood":
		fs := flag.NewFlagSet("flood", flag.ExitOnError)
		secs := fs.Int("seconds", 3, "how long the client writes")
		fs.Parse(os.Args[2:])
		if err := flood(time.Duration(*secs) * time.Second); err != nil {
			log.Fatal(err)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sockmap-probe proxy -listen ADDR -backend ADDR | sockmap-probe flood [-seconds N]")
	os.Exit(2)
}

// kernelPath is the two maps and the verdict program attached to them.
//
// peers: socket cookie -> {peer's cookie, bytes redirected from this
// socket}; socks: socket cookie -> socket.
type kernelPath struct {
	peers, socks *ebpf.Map
	prog         *ebpf.Program
}

// peerValue is a peers map value.
type peerValue struct {
	Peer  uint64
	Bytes uint64
}

func newKernelPath() (*kernelPath, error) {
	peers, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 16, MaxEntries: 1 << 16})
	if err != nil {
		return nil, fmt.Errorf("peers map: %w", err)
	}
	socks, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 8, ValueSize: 8, MaxEntries: 1 << 16})
	if err != nil {
		return nil, fmt.Errorf("sockhash: %w", err)
	}
	// verdict(skb):
	//	v = peers[get_socket_cookie(skb)]
	//	if !v: return SK_PASS (to the socket's own receive queue)
	//	atomic v.Bytes += skb.len
	//	return sk_redirect_hash(skb, socks, &v.Peer, 0) (to the peer's send side)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, peers.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		asm.Mov.Imm(asm.R0, 1), // SK_PASS
		asm.Return(),
		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("found"),
		asm.LoadMem(asm.R3, asm.R6, 0, asm.Word), // skb->len
		asm.AddAtomic.Mem(asm.R7, asm.R3, asm.DWord, 8),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, socks.FD()),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Mov.Imm(asm.R4, 0), // egress of the peer
		asm.FnSkRedirectHash.Call(),
		asm.Return(),
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SkSKB, AttachType: ebpf.AttachSkSKBVerdict,
		Instructions: insns, License: "GPL"})
	if err != nil {
		return nil, fmt.Errorf("verdict program: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: socks.FD(), Program: prog,
		Attach: ebpf.AttachSkSKBVerdict}); err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	return &kernelPath{peers: peers, socks: socks, prog: prog}, nil
}

func (k *kernelPath) serve(ln net.Listener, backend string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go k.splice(c.(*net.TCPConn), backend)
	}
}

// splice connects c to backend and puts both sockets in the kernel's
// hands. Bytes that reached c before it was in the map are read and
// written here; a client that sends more before that write is done may
// see its bytes reordered: one of the reasons lbctl does not take this
// path (docs/benchmarks.md). User space then waits only for either
// side's end.
func (k *kernelPath) splice(c *net.TCPConn, backend string) {
	defer c.Close()
	bc, err := net.Dial("tcp", backend)
	if err != nil {
		return
	}
	b := bc.(*net.TCPConn)
	defer b.Close()
	cs, bs := rawOf(c), rawOf(b)
	kc, kb := cookie(cs), cookie(bs)
	if kc == 0 || kb == 0 {
		return
	}
	defer func() {
		k.socks.Delete(kc)
		k.socks.Delete(kb)
		k.peers.Delete(kc)
		k.peers.Delete(kb)
	}()
	if k.peers.Update(kc, peerValue{Peer: kb}, ebpf.UpdateAny) != nil ||
		k.peers.Update(kb, peerValue{Peer: kc}, ebpf.UpdateAny) != nil {
		return
	}
	// The backend first: once the client is in, its bytes go there.
	if err := k.insert(kb, bs); err != nil {
		log.Print(err)
		return
	}
	if err := k.insert(kc, cs); err != nil {
		log.Print(err)
		return
	}
	var early [64 << 10]byte
	var n int
	cs.Control(func(fd uintptr) { n, _, _ = unix.Recvfrom(int(fd), early[:], unix.MSG_DONTWAIT) })
	if n > 0 {
		if _, err := b.Write(early[:n]); err != nil {
			return
		}
	}
	ended := make(chan struct{}, 2)
	wait := func(x *net.TCPConn) {
		var one [1]byte
		x.Read(one[:]) // returns at the peer's FIN or an error only
		ended <- struct{}{}
	}
	go wait(c)
	go wait(b)
	<-ended
}

func (k *kernelPath) insert(key uint64, rc syscall.RawConn) error {
	var err error
	rc.Control(func(fd uintptr) { err = k.socks.Update(key, uint64(fd), ebpf.UpdateAny) })
	if err != nil {
		return fmt.Errorf("sockhash insert: %w", err)
	}
	return nil
}

func rawOf(c *net.TCPConn) syscall.RawConn {
	rc, err := c.SyscallConn()
	if err != nil {
		log.Fatal(err)
	}
	return rc
}

func cookie(rc syscall.RawConn) uint64 {
	var v uint64
	rc.Control(func(fd uintptr) { v, _ = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) })
	return v
}

// flood shows the missing back-pressure: a client writes for d through
// the kernel path to a backend that never reads.
func flood(d time.Duration) error {
	be, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer be.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := be.Accept()
		if err == nil {
			held <- c // never read
		}
	}()
	k, err := newKernelPath()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	go k.serve(ln, be.Addr().String())

	before, err := memAvailable()
	if err != nil {
		return err
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	var sent int64
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
	}
	after, err := memAvailable()
	if err != nil {
		return err
	}
	bc := <-held
	defer bc.Close()
	fmt.Printf("the client wrote %d MB in %v to a backend that read nothing; MemAvailable fell by %d MB\n",
		sent>>20, d, (before-after)>>20)
	fmt.Println("(through a proxy with back-pressure, the client stops at the sockets' buffers: a few MB)")
	return nil
}

func memAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, io.ErrUnexpectedEOF
}
