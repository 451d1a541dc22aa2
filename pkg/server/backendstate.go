package server

// backendstate.go: a backend's health state, which outlives reloads while
// its pool and address stay: the active and passive verdicts, the one state
// they make (pushed to the balancer, lbctl_backend_up and the log) and the
// slow-start ramp after a comeback.

import (
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/health"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Backend health in lbctl has two inputs and one output.
//
//   - The active verdict comes from the health package's Checker (rise/fall
//     over tcp, http or send-expect checks). Before the first check of a
//     backend completes, the verdict is "up"; the first result alone decides.
//     check = "none" keeps the verdict at "up".
//   - The passive verdict comes from the data path: pkg/tcpproxy and
//     pkg/udpproxy report every failed connect through pool.ConnectFailed.
//     max_fails failures within fail_timeout eject the backend for
//     fail_timeout (nginx's semantics), whatever the active checks say in
//     the meantime. max_fails = 0 turns this off.
//
// A backend is up when the active verdict is up and no passive ejection
// holds. That single state is what the balancer sees (SetHealthy), what
// lbctl_backend_up shows and what the log reports: one line per change of
// that state, with the reason, never one per check or per connection.
// A backend that comes back up with slow_start set ramps its weight from
// 10% to full over slow_start.

// backend is the server's view of one backend: the balancer's state plus
// what decides its health (active checks and passive ejection). The same
// value is reused across reloads while pool and address stay.
type backend struct {
	pool string
	b    *balancer.Backend // named as configured, or IP:port
	ap   netip.AddrPort    // identity within the pool
	addr string            // ap as a string: what is dialled and checked
	hkey string            // the health monitor's key: pool|addr
	log  *zap.Logger
	m    *metrics.Metrics

	// Membership, guarded by Server.mu.
	inGen    bool   // a member of the generation in service
	gen      *pool  // the last generation it was a member of
	mark     uint64 // livePool.epoch of the last merge that saw it
	fresh    bool   // made for a generation not yet committed
	weight   int    // in force (the override when there is one)
	backup   bool   //
	source   string // "config", "api", "dns:NAME", ...
	override *int   // SetWeightOverride; nil = none
	removing bool   // left the pool, draining (removal.go)
	drainAt  time.Time
	killed   bool // drain_timeout reached: its connections were reset
	// Per listener name, the proxies' targets (with their metric
	// handles), reused by every generation.
	tcpTargets map[string]*tcpproxy.Target
	udpTargets map[string]*udpproxy.Target
	tcpConns   tcpproxy.Registry // its connections, for kill
	udpConns   udpproxy.Registry // its sessions, for kill
	// The admin state and weight last exported (operate.go).
	settings settingsPub

	mu          sync.Mutex
	upGauge     prometheus.Gauge // lbctl_backend_up; set by start, deleted by stop
	activeUp    bool             // last active-check verdict (true when unchecked)
	passiveDown bool             // ejected by max_fails within fail_timeout
	fails       []time.Time      // recent connect failures (len < max_fails)
	passiveT    *time.Timer      // ends the passive ejection
	maxFails    int
	failTimeout time.Duration
	slowStart   time.Duration
	rampStop    chan struct{} // closes to end the slow-start ramp goroutine
	stopped     bool          // left the configuration: no more changes
	lastChange  time.Time     // of health or admin state; zero = never
	lastCheck   *CheckStatus  // the last active check's outcome
}

// newBackend makes the state of a backend new to pool: healthy until its
// first check says otherwise. Nothing is registered for it yet.
func (s *Server) newBackend(pool, name string, ap netip.AddrPort) *backend {
	addr := ap.String()
	return &backend{
		pool:     pool,
		b:        balancer.NewBackend(name),
		ap:       ap,
		addr:     addr,
		hkey:     pool + "|" + addr,
		log:      s.log,
		m:        s.m,
		activeUp: !s.handover.wasDown(pool, ap), // down in the old process of an upgrade: until checked
		fresh:    true,
	}
}

func (be *backend) key() string { return be.hkey }

// stop ends the backend's timers and goroutines and deletes its
// lbctl_backend_up series. Connections of an old generation may still
// report failures afterwards; they change nothing.
func (be *backend) stop() {
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.stopped {
		return
	}
	be.stopped = true
	if be.passiveT != nil {
		be.passiveT.Stop()
		be.passiveT = nil
	}
	be.stopRampLocked()
	if be.upGauge != nil {
		be.m.BackendUp.DeleteLabelValues(be.pool, be.b.Address())
	}
}

// publishLocked recomputes the backend's state from the active and passive
// verdicts and pushes it to the balancer and lbctl_backend_up. A change of
// state is logged here, once, with the check that caused it and why; a
// verdict that does not change the state is logged at debug level only.
// The caller holds be.mu (so transitions are logged in order).
func (be *backend) publishLocked(check, reason string, extra ...zap.Field) {
	if be.stopped {
		return
	}
	up := be.activeUp && !be.passiveDown
	changed := be.b.SetHealthy(up)
	if changed {
		be.lastChange = time.Now()
	}
	if be.upGauge != nil {
		v := 0.0
		if up {
			v = 1
		}
		be.upGauge.Set(v)
	}
	fields := []zap.Field{zap.String("pool", be.pool), zap.String("backend", be.b.Address()),
		zap.String("check", check), zap.String("reason", reason)}
	fields = append(fields, extra...)
	switch {
	case !changed:
		if check != "" {
			be.log.Debug("backend verdict without change of state", append(fields,
				zap.Bool("up", up), zap.Bool("active_up", be.activeUp), zap.Bool("passive_down", be.passiveDown))...)
		}
	case up:
		if be.slowStart > 0 {
			be.startRampLocked()
		}
		be.log.Info("backend up", fields...)
	default:
		be.stopRampLocked()
		be.log.Warn("backend down", fields...)
	}
}

// startRampLocked ramps the backend's effective weight from 10% to full
// over slow_start, in steps of slow_start/20 (at least 10ms). The caller
// holds be.mu.
func (be *backend) startRampLocked() {
	if be.rampStop != nil {
		close(be.rampStop)
	}
	stop := make(chan struct{})
	be.rampStop = stop
	total := be.slowStart
	be.b.SetWeightScale(100)
	go be.ramp(stop, total)
}

// ramp is the slow-start goroutine of one comeback; it ends when the weight
// is full or stop closes.
func (be *backend) ramp(stop chan struct{}, total time.Duration) {
	step := max(total/20, 10*time.Millisecond)
	t := time.NewTicker(step)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f := time.Since(start)
			be.mu.Lock()
			if be.rampStop != stop { // replaced or ended meanwhile
				be.mu.Unlock()
				return
			}
			if f < total {
				be.b.SetWeightScale(100 + int(900*f/total))
				be.mu.Unlock()
				continue
			}
			be.rampStop = nil
			be.b.SetWeightScale(1000)
			be.mu.Unlock()
			return
		}
	}
}

// stopRampLocked ends a slow-start ramp in progress and restores the full
// weight. The caller holds be.mu.
func (be *backend) stopRampLocked() {
	if be.rampStop != nil {
		close(be.rampStop)
		be.rampStop = nil
	}
	be.b.SetWeightScale(1000)
}

func (be *backend) connectFailed(now time.Time, err error) {
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.stopped || be.maxFails <= 0 || be.passiveDown {
		return
	}
	cut := now.Add(-be.failTimeout)
	recent := be.fails[:0]
	for _, t := range be.fails {
		if t.After(cut) {
			recent = append(recent, t)
		}
	}
	be.fails = append(recent, now)
	if len(be.fails) < be.maxFails {
		return
	}
	be.fails = be.fails[:0]
	be.passiveDown = true
	ft := be.failTimeout
	var timer *time.Timer
	timer = time.AfterFunc(ft, func() {
		be.mu.Lock()
		defer be.mu.Unlock()
		if be.passiveT != timer {
			return // stopped meanwhile
		}
		be.passiveT = nil
		be.passiveDown = false
		be.publishLocked("passive", "passive ejection over after "+ft.String())
	})
	be.passiveT = timer
	be.publishLocked("passive", strconv.Itoa(be.maxFails)+" failed connects within "+ft.String(), zap.NamedError("error", err))
}

// recordCheck keeps the outcome of the backend's last active check for
// status. took is the check's duration when known; the health package's
// callback does not report it yet, so status shows 0 for now.
func (be *backend) recordCheck(o health.Outcome, err error, at time.Time, took time.Duration) {
	c := &CheckStatus{Result: o.String(), At: at, DurationSeconds: took.Seconds()}
	if err != nil {
		c.Reason = err.Error()
	}
	be.mu.Lock()
	be.lastCheck = c
	be.mu.Unlock()
}
