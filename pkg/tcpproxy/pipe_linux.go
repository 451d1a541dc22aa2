package tcpproxy

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Pipes for splicing. A direction takes one for a bulk burst only and
// gives it back once src has nothing queued, so an idle connection holds
// none. Between bursts a few empty pipes wait in a free list, so that a
// bulk transfer does not open and close a pipe per burst; the list is
// bounded (maxFreePipes) and a pipe unused for pipeIdle is closed, so
// descriptors held for splicing return to the process soon after the
// traffic stops.
const (
	maxFreePipes = 16
	pipeIdle     = time.Second
)

// pipe is a kernel pipe, empty whenever it is in the free list.
type pipe struct {
	r, w  int
	freed int64 // nanotime when it was put back
}

var pipes pipePool

type pipePool struct {
	mu    sync.Mutex
	free  []*pipe // oldest first: put appends, get takes the newest
	sweep *time.Timer
	armed bool // sweep is scheduled
}

// get returns an empty pipe, or nil when none can be opened (out of
// descriptors).
func (pp *pipePool) get() *pipe {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free[n-1] = nil
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil
	}
	// As Go's own splice does: one pipe holds one spliceMax burst. A
	// smaller pipe (over the per-user limit, fs.pipe-user-pages-soft)
	// still works, with more calls.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, spliceMax)
	return &pipe{r: fds[0], w: fds[1]}
}

// put gives back an empty pipe.
func (pp *pipePool) put(p *pipe) {
	p.freed = nanotime()
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if len(pp.free) >= maxFreePipes {
		p.close()
		return
	}
	pp.free = append(pp.free, p)
	if !pp.armed {
		pp.armed = true
		if pp.sweep == nil {
			pp.sweep = time.AfterFunc(pipeIdle, pp.closeIdle)
		} else {
			pp.sweep.Reset(pipeIdle)
		}
	}
}

// closeIdle closes the pipes unused for pipeIdle, and runs again while
// any is left.
func (pp *pipePool) closeIdle() {
	now := nanotime()
	pp.mu.Lock()
	defer pp.mu.Unlock()
	i := 0
	for ; i < len(pp.free) && now-pp.free[i].freed >= int64(pipeIdle); i++ {
		pp.free[i].close()
	}
	n := copy(pp.free, pp.free[i:])
	clear(pp.free[n:])
	pp.free = pp.free[:n]
	if n == 0 {
		pp.armed = false
		return
	}
	pp.sweep.Reset(time.Duration(int64(pipeIdle) - (now - pp.free[0].freed)))
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
