// Package server is lbctl's composition root: it turns a validated
// config.Config into bound listeners, balanced pools and health checkers,
// owns every goroutine they need, and handles reload and shutdown.
//
//	s, err := server.New(cfg, server.Options{Log: log, Metrics: m})
//	if err := s.Start(); err != nil { ... }   // binds every listener
//	...
//	err = s.Reload(newCfg)                     // atomic swap, no dropped connection
//	s.Shutdown(ctx)                            // stop accepting, drain, close
//
// Reload builds the whole new runtime (pools, proxies, sockets for new bind
// addresses) before it changes anything; a failure leaves the running
// configuration untouched. Listeners are keyed by protocol and bind address,
// so a listener whose address stays keeps its socket (no refused
// connection), and its new handler is swapped in with one atomic store while
// established connections keep their old handler. Backends are keyed by pool
// and address (IP:port), so health, admin state and counters survive a
// reload.
//
// A pool's backend set is live (pool.go): the config file's entries, the
// backends added through the admin API (runtime.go) and each discovery
// source's last good set (sources.go) are merged into one member list, and
// a change of that list puts a new generation in service the same way, by
// one atomic store per listener. A backend that leaves the set drains
// (removal.go); the state file keeps run-time changes across restarts
// (state.go).
//
// The server never copies bytes itself: pkg/tcpproxy and pkg/udpproxy do.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/discovery"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"go.uber.org/zap"
)

// Options are the server's injected dependencies.
type Options struct {
	Log     *zap.Logger      // required
	Metrics *metrics.Metrics // required
	// Inherited holds sockets inherited from the service manager (socket
	// activation), or passed by the old process of an upgrade
	// (ListenerFiles), by protocol and address. A listener whose bind matches a
	// key uses a duplicate of that socket instead of binding one.
	Inherited map[SocketKey]InheritedSocket
	// Resolver resolves backend host names; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// NewSource makes the discovery source of a [[pools.X.discover]]
	// entry; nil means the discovery package's (tests inject fakes).
	NewSource func(d config.Discover) (discovery.Source, error)
	// Version is lbctl's version, for status.
	Version string
	// HoldUDP: the UDP listeners do not read from their sockets until
	// ReleaseUDP (the new process of an upgrade, handover.go).
	HoldUDP bool
	// Handover is the run-time state the old process of an upgrade passed
	// (HandoverState, upgrade.go); Start applies it after the state file.
	// Its backends that were down start down.
	Handover []byte
}

// Server runs listeners and pools for one lbctl process.
type Server struct {
	log    *zap.Logger
	access *zap.Logger
	m      *metrics.Metrics
	opts   Options

	mu        sync.Mutex // serialises Start, Reload and Shutdown
	reloadMu  sync.Mutex // serialises Start and Reload, held while resolving host names outside mu
	cfg       atomic.Pointer[config.Config]
	listeners map[string]*listener   // by key(protocol, bind)
	removed   map[*listener]struct{} // UDP listeners a reload removed, while they drain (udp.go)
	pools     map[string]*livePool   // by pool name (pool.go)
	draining  map[*backend]*livePool // removed backends while they drain (removal.go)
	reaping   bool                   // the reap goroutine runs
	refreshes atomic.Int64           // generations put in service by refresh (tests)
	bg        sync.WaitGroup         // reap and the discovery sources
	done      chan struct{}          // closed when Shutdown begins: background goroutines end
	started   bool
	stopping  atomic.Bool
	leaving   atomic.Bool // Shutdown has begun, maybe still withdrawing BGP routes: not ready
	ready     atomic.Bool

	conns   sync.WaitGroup     // every proxied connection and UDP session
	killCtx context.Context    // canceled when the shutdown drain time is over
	kill    context.CancelFunc //
	// udpDrain is closed when Shutdown begins: UDP listeners stop opening
	// sessions and close once theirs have ended (drainUDP).
	udpDrain chan struct{}
	health   *healthMonitor
	alive    aliveState // what Alive remembers between calls (alive.go)
	info     runInfo    // version, start and last reload, for status (runinfo.go)
	file     fileCheck  // lbctl_config_file_changed (operate.go)
	bgp      bgpState   // the BGP speaker and the announcements (bgp.go)
	// The udpproxy.Listener of each UDP listener being served, for the
	// handover (handover_udp.go); udpMu also guards opts.HoldUDP after New.
	udpMu    sync.Mutex
	udpLs    map[*listener]*udpproxy.Listener
	handover *handoverState // Options.Handover decoded (upgrade.go)
}

// New prepares a server for cfg. It binds nothing yet.
func New(cfg *config.Config, opts Options) (*Server, error) {
	if opts.Log == nil || opts.Metrics == nil {
		return nil, errors.New("server: Log and Metrics are required")
	}
	s := &Server{
		log:       opts.Log,
		m:         opts.Metrics,
		opts:      opts,
		listeners: map[string]*listener{},
		removed:   map[*listener]struct{}{},
		pools:     map[string]*livePool{},
		draining:  map[*backend]*livePool{},
		done:      make(chan struct{}),
		udpDrain:  make(chan struct{}),
		udpLs:     map[*listener]*udpproxy.Listener{},
	}
	h, err := decodeHandover(opts.Handover)
	if err != nil {
		return nil, err
	}
	s.handover = h
	s.killCtx, s.kill = context.WithCancel(context.Background())
	s.health = newHealthMonitor(s.log, s.m)
	s.cfg.Store(cfg)
	opts.Metrics.SetConfigFileCheck(s.configFileChanged)
	return s, nil
}

// Config returns the configuration in force.
func (s *Server) Config() *config.Config { return s.cfg.Load() }

// Ready reports whether every listener is bound and the server is not
// stopping (the admin API's /readyz). It turns false as soon as Shutdown
// begins, while the listeners still accept during [bgp] withdraw_delay, so
// that health checkers of other load balancers stop sending new flows at the
// same time as the routers.
func (s *Server) Ready() bool { return s.ready.Load() && !s.stopping.Load() && !s.leaving.Load() }

// Start binds every listener of the configuration and starts serving. On
// error nothing is left bound.
func (s *Server) Start() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	resolved, err := s.resolveAll(s.cfg.Load())
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("server: already started")
	}
	// The TCP event loops, made now so that their descriptors are there
	// from the start; failing that, the first connections make them.
	if err := tcpproxy.StartEngines(); err != nil {
		s.log.Warn("tcp event loops not started yet", zap.Error(err))
	}
	if err := s.startBGP(s.cfg.Load()); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	if err := s.apply(s.cfg.Load(), resolved); err != nil {
		s.stopBGP()
		return err
	}
	s.runBGP() // announces once an eligible backend is seen
	s.loadState()
	s.applyHandover() // upgrade.go
	s.info.start(time.Now())
	s.m.ConfigLoaded(time.Now())
	s.started = true
	s.ready.Store(true)
	return nil
}

// Reload replaces the running configuration by cfg, which must already be
// validated. On error the old configuration keeps running untouched.
func (s *Server) Reload(cfg *config.Config) error {
	// Host names are resolved before the server lock is taken, so a slow
	// resolver delays this reload but never the admin API (Status,
	// SetBackendAdmin) or the watchdog. reloadMu keeps reloads in order.
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	resolved, rerr := s.resolveAll(cfg)
	s.mu.Lock()
	defer s.mu.Unlock()
	// leaving is set first thing in Shutdown (Ready turns false then),
	// stopping a moment later: a reload refused by neither would apply
	// to a server on its way out.
	if !s.started || s.stopping.Load() || s.leaving.Load() {
		return ErrNotRunning
	}
	old := s.cfg.Load()
	err := rerr
	if err == nil {
		err = s.apply(cfg, resolved)
	}
	if err != nil {
		s.forgetSeries(cfg, old) // what the failed build created
		s.info.reloaded(time.Now(), err)
		s.m.ReloadResult(false, time.Now())
		s.log.Error("reload failed, the old configuration keeps running", ErrorField(err))
		return err
	}
	s.cfg.Store(cfg)
	s.forgetSeries(old, cfg)
	s.reloadBGP(old, cfg)
	s.info.reloaded(time.Now(), nil)
	s.m.ReloadResult(true, time.Now())
	s.log.Info("configuration reloaded", zap.String("file", cfg.File), zap.Strings("changes", diff(old, cfg)))
	return nil
}

// Shutdown closes every listener (new connections are refused), lets open
// connections finish until ctx is done, then closes the rest. It returns
// once every connection goroutine has ended. A UDP listener refuses new
// sessions at once but keeps its socket until its open sessions end or ctx
// is done, since their replies leave through it.
//
// The lock is held only while the listeners close and when the pools stop,
// not during the drain, so Status and SetBackendAdmin keep answering (the
// admin API stays usable while connections finish).
//
// With [bgp], every announced prefix is withdrawn first and the listeners
// close withdraw_delay later (or when ctx is done, if sooner), so that
// routers stop sending new flows while lbctl still accepts them (bgp.go).
func (s *Server) Shutdown(ctx context.Context) {
	s.leaving.Store(true)
	if d := s.withdrawBGP(); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	s.mu.Lock()
	if !s.stopping.Swap(true) {
		close(s.udpDrain)
		close(s.done)
		for _, lp := range s.pools {
			for _, r := range lp.srcs {
				s.stopSource(r)
			}
		}
	}
	var udp []*listener
	for _, l := range s.listeners {
		// Closed, but kept in the table so that Status shows each listener
		// and its open connections while the drain runs. A UDP listener's
		// socket stays open until its sessions end: their replies leave
		// through it (udp.go).
		if l.udp != nil {
			udp = append(udp, l)
			continue
		}
		l.close()
	}
	for l := range s.removed { // draining already, since their reload
		udp = append(udp, l)
	}
	s.mu.Unlock()
	s.bg.Wait() // the sources and reap, which take s.mu
	s.health.stop()

	drained := make(chan struct{})
	go func() {
		s.conns.Wait()
		for _, l := range udp {
			<-l.done
		}
		close(drained)
	}()
	select {
	case <-drained:
	case <-ctx.Done():
		tcp, sessions := s.openConns()
		s.log.Info("shutdown timeout reached, closing the remaining connections",
			zap.Int("connections", tcp), zap.Int("udp_sessions", sessions))
		s.kill()
		<-drained
	}
	s.kill()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range udp {
		l.close() // its socket is closed already: this marks it closed
	}
	for _, lp := range s.pools {
		s.stopPool(lp)
	}
	s.stopBGP()
}

// apply builds the runtime for cfg and swaps it in. Everything that can
// fail happens before the first change.
func (s *Server) apply(cfg *config.Config, resolved map[string]string) error {
	var tb targetBuild
	plans, err := s.planPools(cfg, resolved)
	if err != nil {
		return err
	}
	states := make(map[string]*listenerState, len(cfg.Listeners))
	for _, lc := range cfg.Listeners {
		var gen *pool
		if pl := plans[lc.Pool]; pl != nil {
			gen = pl.gen
		}
		st, err := s.buildListenerState(lc, gen, planGens(plans), cfg.Log.Access, &tb)
		if err != nil {
			tb.forget(s)
			forgetFresh(s, plans)
			return fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		states[listenerKeyOf(lc)] = st
	}

	// Bind the sockets that are new; on failure close what was bound here.
	fresh := map[string]*listener{}
	for _, lc := range cfg.Listeners {
		k := listenerKeyOf(lc)
		if _, ok := s.listeners[k]; ok {
			continue
		}
		l, err := s.bind(lc)
		if err != nil {
			for _, f := range fresh {
				f.close()
			}
			tb.forget(s)
			forgetFresh(s, plans)
			return fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		fresh[k] = l
	}

	// Commit. Pools first, so handlers never see a half-built pool.
	oldPools := s.pools
	s.pools = make(map[string]*livePool, len(plans))
	for name, pl := range plans {
		s.pools[name] = pl.lp
		pl.lp.conf = pl.conf
		s.commit(pl.lp, pl.gen, pl.fresh)
		s.swapSources(pl.lp, pl.srcs)
	}
	for name, lp := range oldPools {
		if _, kept := plans[name]; !kept {
			s.stopPool(lp)
		}
	}
	if old := s.cfg.Load(); old != nil && s.started {
		// Series of a listener that left, or that now serves another pool
		// or protocol.
		byName := make(map[string]*config.Listener, len(cfg.Listeners))
		for _, lc := range cfg.Listeners {
			byName[lc.Name] = lc
		}
		for _, ol := range old.Listeners {
			s.dropLeftTargets(ol, byName[ol.Name]) // its pool and its routes' (tlsroute.go)
		}
	}
	tb.adopt()
	for k, l := range s.listeners {
		st, kept := states[k]
		if !kept {
			// Its connections and sessions finish on their own.
			delete(s.listeners, k)
			if l.udp != nil {
				s.removeUDP(l, cfg.ShutdownTimeout)
			} else {
				l.close()
			}
			continue
		}
		l.state.Store(st)
	}
	for k, l := range fresh {
		l.state.Store(states[k])
		s.listeners[k] = l
		s.serve(l)
		s.log.Info("listening", zap.String("listener", states[k].name), zap.String("protocol", l.protocol),
			zap.String("bind", l.addr().String()), zap.String("pool", states[k].poolName()))
	}
	return nil
}

// listenerKeyOf identifies a listener's socket across reloads: protocol and
// bind address, plus the name for an ephemeral port (several listeners may
// bind port 0, each getting its own socket).
func listenerKeyOf(lc *config.Listener) string {
	k := lc.Protocol + "|" + lc.Bind
	if strings.HasSuffix(lc.Bind, ":0") {
		k += "|" + lc.Name
	}
	return k
}

// Listeners returns the bound listeners' addresses by listener name (useful
// when a bind port is 0).
func (s *Server) Listeners() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]net.Addr{}
	for _, l := range s.listeners {
		if st := l.state.Load(); st != nil {
			out[st.name] = l.addr()
		}
	}
	return out
}

// resolveAll resolves every static backend address of cfg: configured
// address to "ip:port". A host name that does not resolve is a
// config.Errors naming its file, line and key path.
func (s *Server) resolveAll(cfg *config.Config) (map[string]string, error) {
	r := s.opts.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	return config.ResolveBackends(cfg, func(ctx context.Context, host string) ([]netip.Addr, error) {
		return r.LookupNetIP(ctx, "ip", host)
	})
}

// isTemporaryAcceptErr reports errors after which accepting can go on once
// the cause passes: out of descriptors or memory, or a connection aborted
// before it was accepted.
func isTemporaryAcceptErr(err error) bool {
	for _, e := range temporaryAcceptErrs {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var temporaryAcceptErrs = []error{
	syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM,
	syscall.EAGAIN, syscall.EINTR, syscall.EPROTO, syscall.EPERM,
}
