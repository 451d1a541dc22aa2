package lab

import (
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Digests returns each instance's pools' table_digest (instance -> pool
// -> digest), from their status.
func (l *Lab) Digests() (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, in := range l.Instances {
		st, err := in.Status()
		if err != nil {
			return nil, err
		}
		out[in.Name] = map[string]string{}
		for _, p := range st.Pools {
			out[in.Name][p.Name] = p.TableDigest
		}
	}
	return out, nil
}

// FlowsResult is the outcome of Flows: for each client address, one TCP
// connection to VIP through the router, and one to each instance's own
// address.
type FlowsResult struct {
	ViaRouter []Flow   // [client]
	Direct    [][]Flow // [client][instance]
}

// Flows connects from each of the first n client addresses to VIP through
// the router (ECMP picks the instance), and to each instance directly.
func (l *Lab) Flows(n int) (*FlowsResult, error) {
	var specs []flowSpec
	for _, c := range l.clients[:n] {
		specs = append(specs, flowSpec{c, VIP, "router"})
		for _, in := range l.Instances {
			specs = append(specs, flowSpec{c, in.Addr, in.Name})
		}
	}
	flows, err := l.tcpFlows(specs, 16)
	if err != nil {
		return nil, err
	}
	r := &FlowsResult{}
	per := 1 + len(l.Instances)
	for i := 0; i < len(flows); i += per {
		r.ViaRouter = append(r.ViaRouter, flows[i])
		r.Direct = append(r.Direct, flows[i+1:i+per])
	}
	return r, nil
}

// Served counts flows by the instance that served them ("" for failed).
func Served(flows []Flow) map[string]int {
	m := map[string]int{}
	for _, f := range flows {
		m[f.Instance]++
	}
	return m
}

// Failed returns the flows that failed.
func Failed(flows []Flow) []Flow {
	var out []Flow
	for _, f := range flows {
		if f.Err != nil {
			out = append(out, f)
		}
	}
	return out
}

// Disagreements returns the indexes of the clients whose four flows did
// not all reach the same backend (or failed).
func (r *FlowsResult) Disagreements() []int {
	var out []int
	for i, f := range r.ViaRouter {
		ok := f.Err == nil
		for _, d := range r.Direct[i] {
			ok = ok && d.Err == nil && d.Backend == f.Backend
		}
		if !ok {
			out = append(out, i)
		}
	}
	return out
}

// Moves compares two exchanges on the same UDP flows: how many flows
// were served by another instance the second time, and how many of
// those, and of all, changed backend.
type Moves struct {
	Flows, Moved, MovedKept, Changed int
	Failed                           int
}

// CompareUDP compares before and after (the same flows, in order).
func CompareUDP(before, after []Flow) Moves {
	var m Moves
	for i, a := range after {
		b := before[i]
		m.Flows++
		if a.Err != nil || b.Err != nil {
			m.Failed++
			continue
		}
		if a.Instance != b.Instance {
			m.Moved++
			if a.Backend == b.Backend {
				m.MovedKept++
			}
		}
		if a.Backend != b.Backend {
			m.Changed++
		}
	}
	return m
}

// StarveResult is the outcome of Starve.
type StarveResult struct {
	Instance string
	// Withdrawn is how long after its backends became unreachable the
	// router's route lost the instance.
	Withdrawn time.Duration
	Flows     []Flow // TCP flows through the router once it was withdrawn
	UDPBefore []Flow
	UDPAfter  []Flow // the same UDP flows once it was withdrawn
	// Returned is how long after its backends became reachable again the
	// router's route had the instance back.
	Returned time.Duration
}

// Starve makes in's backends unreachable from in alone (a prohibit route
// to the backends' network in its namespace: its health checks fail, no
// pool of its listeners has an eligible backend), waits until the router
// no longer sends it flows, makes n TCP flows through the router and an
// exchange on every UDP flow, then gives it its backends back and waits
// until the router uses it again.
func (l *Lab) Starve(in *Instance, n int) (*StarveResult, error) {
	r := &StarveResult{Instance: in.Name, UDPBefore: l.ExchangeUDP()}
	others := l.namesBut(in)
	begin := time.Now()
	if _, err := in.ns.ip("route", "add", "prohibit", "10.77.9.0/24"); err != nil {
		return nil, err
	}
	at, err := l.WaitHops(15*time.Second, others...)
	if err != nil {
		return nil, err
	}
	r.Withdrawn = at.Sub(begin)
	var specs []flowSpec
	for _, c := range l.clients[:n] {
		specs = append(specs, flowSpec{c, VIP, "router"})
	}
	if r.Flows, err = l.tcpFlows(specs, 16); err != nil {
		return nil, err
	}
	r.UDPAfter = l.ExchangeUDP()
	begin = time.Now()
	if _, err := in.ns.ip("route", "del", "prohibit", "10.77.9.0/24"); err != nil {
		return nil, err
	}
	if at, err = l.WaitHops(15*time.Second, l.namesBut(nil)...); err != nil {
		return nil, err
	}
	r.Returned = at.Sub(begin)
	return r, nil
}

// namesBut is the names of the running instances but not, sorted.
func (l *Lab) namesBut(not *Instance) []string {
	var names []string
	for _, in := range l.Instances {
		if in != not && in.Proc != nil && in.Proc.Running() {
			names = append(names, in.Name)
		}
	}
	slices.Sort(names)
	return names
}

// StopResult is the outcome of Stop; durations are since Begin, the
// SIGTERM.
type StopResult struct {
	Instance string
	Begin    time.Time
	// RouteSeen is the last time the router's route was seen with the
	// instance, RouteGone the first time without it: the router changed
	// its route in between.
	RouteSeen, RouteGone time.Duration
	// LastServed: the end of the last flow through the router that the
	// instance served (negative: before the SIGTERM).
	LastServed time.Duration
	// FirstRefused: the first connect to its own address that was
	// refused (its listener closed).
	FirstRefused time.Duration
	Exited       time.Duration // the process exited
	ExitErr      error         // its exit status (nil: 0)
	// Flows are the new TCP connections through the router made from 1 s
	// before the SIGTERM until after the instance exited.
	Flows     []Flow
	UDPBefore []Flow
	UDPAfter  []Flow // the same UDP flows after it exited
}

// InFlight reports whether f was open while the router changed its route.
// Such a flow may be reset whatever lbctl does: with hash-threshold ECMP
// (Linux's), removing one path moves some flows between the remaining
// paths too, and the rest of a moved TCP connection reaches an instance
// that does not know it.
func (r *StopResult) InFlight(f Flow) bool {
	return f.Start.Before(r.Begin.Add(r.RouteGone)) && f.End.After(r.Begin.Add(r.RouteSeen))
}

// NewFailures are the failed flows that were not in flight when the route
// changed: connections opened during the stop that failed.
func (r *StopResult) NewFailures() []Flow {
	var out []Flow
	for _, f := range Failed(r.Flows) {
		if !r.InFlight(f) {
			out = append(out, f)
		}
	}
	return out
}

// Stop sends SIGTERM to in while clients keep opening new connections
// through the router, and watches the router's route and in's own
// listener: lbctl withdraws its route first, keeps accepting for
// withdraw_delay, then closes its listener and exits.
func (l *Lab) Stop(in *Instance) (*StopResult, error) {
	r := &StopResult{Instance: in.Name, UDPBefore: l.ExchangeUDP()}
	others := l.namesBut(in)

	// Clients: 4 at a time, each pacing itself to one new connection to
	// VIP every 5 ms at most, from rotating client addresses, until stop
	// (bounded: 20,000 connections).
	var (
		mu    sync.Mutex
		flows []Flow
	)
	stop := make(chan struct{})
	jobs := make(chan func())
	go func() {
		defer close(jobs)
		for i := 0; i < 20000; i++ {
			c := l.clients[i%len(l.clients)]
			job := func() {
				f := l.tcpFlow(c, VIP, "router")
				mu.Lock()
				flows = append(flows, f)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond) // pacing
			}
			select {
			case <-stop:
				return
			case jobs <- job:
			}
		}
	}()
	clientsDone := make(chan error, 1)
	go func() { clientsDone <- l.client.workers(4, jobs) }()
	finish := func() error {
		select {
		case <-stop:
		default:
			close(stop)
		}
		return <-clientsDone
	}
	count := func(name string) int {
		mu.Lock()
		defer mu.Unlock()
		return Served(flows)[name]
	}
	// Wait until the instance has served some of them.
	loopStart := time.Now()
	if err := until(10*time.Second, func() (bool, string) {
		n := count(in.Name)
		return n >= 20 && time.Since(loopStart) > 300*time.Millisecond, fmt.Sprintf("%s served %d flows", in.Name, n)
	}); err != nil {
		finish()
		return nil, err
	}

	// A prober connects to the instance's own address until refused.
	var refused time.Time
	probeStop := make(chan struct{})
	probeDone := make(chan error, 1)
	go func() {
		probeDone <- l.client.do(func() error {
			for range 5000 {
				select {
				case <-probeStop:
					return nil
				default:
				}
				f := l.tcpFlow(l.clients[0], in.Addr, in.Name)
				if f.Err != nil {
					refused = f.End
					return nil
				}
				time.Sleep(5 * time.Millisecond) // pacing
			}
			return nil
		})
	}()

	r.Begin = time.Now()
	if err := in.Proc.Signal(syscall.SIGTERM); err != nil {
		finish()
		close(probeStop)
		<-probeDone
		return nil, err
	}
	seen, gone, err := l.waitHops(10*time.Second, others...)
	if err == nil {
		r.RouteSeen, r.RouteGone = max(seen.Sub(r.Begin), 0), gone.Sub(r.Begin)
		select {
		case <-in.Proc.Exited():
		case <-time.After(15 * time.Second):
			err = fmt.Errorf("%s still running 15 s after SIGTERM", in.Name)
		}
	}
	r.Exited = time.Since(r.Begin)
	r.ExitErr = in.Proc.Err()
	// The prober goes on until refused: with nothing to drain, the
	// listener closes and the process exits within a few milliseconds,
	// and a prober stopped at the exit could miss that window; once the
	// process is gone its address refuses at once.
	select {
	case <-probeDone:
	case <-time.After(5 * time.Second):
		close(probeStop)
		<-probeDone
	}
	// A little traffic after the exit too.
	time.Sleep(200 * time.Millisecond)
	if cerr := finish(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if refused.IsZero() {
		return nil, fmt.Errorf("%s's own address never refused a connection", in.Name)
	}
	r.FirstRefused = refused.Sub(r.Begin)
	r.LastServed = -time.Hour
	for _, f := range flows {
		if f.End.After(r.Begin.Add(-time.Second)) {
			r.Flows = append(r.Flows, f)
		}
		if f.Instance == in.Name && f.End.Sub(r.Begin) > r.LastServed {
			r.LastServed = f.End.Sub(r.Begin)
		}
	}
	r.UDPAfter = l.ExchangeUDP()
	return r, nil
}
