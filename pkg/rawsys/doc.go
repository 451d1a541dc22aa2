// Package rawsys makes the system calls of lbctl's event loops
// (pkg/tcpproxy, pkg/udpproxy) that never wait: reads and writes of
// non-blocking sockets, epoll_pwait with a zero timeout, shutdown. They are
// made with RawSyscall, without telling the Go scheduler that the goroutine
// is in a system call. With Syscall, each entry can wake the runtime's
// sysmon thread from its deep sleep, and sysmon takes the P away from a
// call it sees twice 20 µs apart (a write that delivers on loopback can
// last that long) and hands it to another thread: a hand-off for nothing,
// as the loop is back a moment later. Measured at 32 request/response
// connections, sysmon fell from 13.6 % to 0.6 % of lbctl's CPU samples
// (docs/benchmarks.md, Issue 14). The calls that open, set up and close a
// loop's sockets (socket, setsockopt, getsockopt, epoll_ctl, close) are
// raw too: through Syscall, every connection that came after a moment
// with nothing to run woke sysmon from its deep sleep, which then polled
// every 20 µs for a millisecond or more (0.2-0.4 nanosleep per short
// connection, 0.02 raw). Blocking waits still go through Go's poller.
//
// Linux only; elsewhere the package is empty.
package rawsys
