package server

// bgp.go: the server's side of BGP (pkg/bgp speaks the protocol). A
// [[bgp.announce]] prefix is announced while at least one pool of its
// listeners (a listener's own pool and its routes' pools) has an eligible
// backend: health up, admin state enabled and weight > 0 in the generation
// in service; it is withdrawn when none has. The decision is taken by
// one goroutine, at once after a start or reload and then every
// bgpCheckInterval: health, admin state, weights and discovery change
// backends through many paths (checker verdicts, passive ejection, the
// API, sources), and reading every backend's two atomics a few times a
// second costs nothing, where a hook in each path would be easy to miss.
//
// At Shutdown the prefixes are withdrawn first; lbctl then waits
// withdraw_delay (when something was withdrawn) so that routers stop
// sending new flows, and only then closes its listeners (server.go). A
// reload applies [bgp] changes: the speaker's Update keeps the sessions of
// unchanged peers; removed prefixes are withdrawn, new ones decided at
// once.

import (
	"context"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/lbctl/lbctl/pkg/bgp"
	"github.com/lbctl/lbctl/pkg/config"
	"go.uber.org/zap"
)

// bgpCheckInterval is how often the announcements are decided again.
const bgpCheckInterval = 200 * time.Millisecond

// bgpOpTimeout bounds one call into the speaker (GoBGP works in process;
// this only guards against a wedged speaker).
const bgpOpTimeout = 5 * time.Second

// bgpState is the server's BGP runtime. Lock order: Server.mu, then mu,
// then peerMu; the speaker is never called with peerMu held.
type bgpState struct {
	mu          sync.Mutex
	sp          *bgp.Speaker // nil without [bgp]
	cfg         *config.BGP
	announced   map[netip.Prefix]bool // the decision in force, per configured prefix
	withdrawing bool                  // Shutdown began: nothing is announced any more

	peerMu sync.Mutex
	peers  map[netip.Addr]bool // configured peers: their lbctl_bgp_peer_up exists

	kick chan struct{} // asks the loop to decide now
	stop chan struct{} // closed to end the loop
	done chan struct{} // closed when the loop has ended
}

// speakerConfig is the pkg/bgp view of a [bgp] table.
func speakerConfig(c *config.BGP) bgp.Config {
	out := bgp.Config{ASN: c.ASN, RouterID: c.RouterID}
	for _, p := range c.Peers {
		out.Peers = append(out.Peers, bgp.Peer{Address: p.Address, ASN: p.ASN, Port: p.Port})
	}
	return out
}

// startBGP starts the speaker of cfg (nothing without [bgp]); nothing is
// announced until runBGP decides.
func (s *Server) startBGP(cfg *config.Config) error {
	b := &s.bgp
	b.mu.Lock()
	defer b.mu.Unlock()
	if cfg.BGP == nil {
		return nil
	}
	return s.newSpeakerLocked(cfg.BGP)
}

// newSpeakerLocked makes and starts the speaker of c. b.mu is held.
func (s *Server) newSpeakerLocked(c *config.BGP) error {
	b := &s.bgp
	sp, err := bgp.New(speakerConfig(c), bgp.Options{Log: s.log, OnPeer: s.bgpPeerChanged})
	if err != nil {
		return err
	}
	s.setBGPPeers(c)
	ctx, cancel := context.WithTimeout(context.Background(), bgpOpTimeout)
	defer cancel()
	if err := sp.Start(ctx); err != nil {
		sp.Stop()
		s.setBGPPeers(nil)
		return err
	}
	b.sp, b.cfg = sp, c
	b.announced = map[netip.Prefix]bool{}
	for _, a := range c.Announce {
		b.announced[a.Prefix] = false
		s.m.SetBGPAnnounced(a.Prefix.String(), false)
	}
	return nil
}

// setBGPPeers makes the lbctl_bgp_peer_up series those of c's peers (at 0
// for a new one); nil forgets them all.
func (s *Server) setBGPPeers(c *config.BGP) {
	b := &s.bgp
	b.peerMu.Lock()
	defer b.peerMu.Unlock()
	want := map[netip.Addr]bool{}
	if c != nil {
		for _, p := range c.Peers {
			want[p.Address] = true
		}
	}
	for a := range b.peers {
		if !want[a] {
			s.m.ForgetBGPPeer(a.String())
		}
	}
	for a := range want {
		if !b.peers[a] {
			s.m.SetBGPPeerUp(a.String(), false)
		}
	}
	b.peers = want
}

// bgpPeerChanged is the speaker's OnPeer: lbctl_bgp_peer_up follows the
// session of a peer still configured.
func (s *Server) bgpPeerChanged(p bgp.PeerStatus) {
	b := &s.bgp
	b.peerMu.Lock()
	defer b.peerMu.Unlock()
	if b.peers[p.Address] {
		s.m.SetBGPPeerUp(p.Address.String(), p.Up())
	}
}

// runBGP starts the loop that decides the announcements.
func (s *Server) runBGP() {
	b := &s.bgp
	b.kick = make(chan struct{}, 1)
	b.stop = make(chan struct{})
	b.done = make(chan struct{})
	go func() {
		defer close(b.done)
		t := time.NewTicker(bgpCheckInterval)
		defer t.Stop()
		for {
			s.decideBGP()
			select {
			case <-b.stop:
				return
			case <-b.kick:
			case <-t.C:
			}
		}
	}()
}

// kickBGP asks the loop to decide now (after a reload).
func (s *Server) kickBGP() {
	if s.bgp.kick == nil {
		return
	}
	select {
	case s.bgp.kick <- struct{}{}:
	default:
	}
}

// decideBGP announces each configured prefix whose listeners have an
// eligible backend and withdraws the others.
func (s *Server) decideBGP() {
	cfg := s.cfg.Load()
	if cfg.BGP == nil {
		return
	}
	want := make(map[netip.Prefix]bool, len(cfg.BGP.Announce))
	s.mu.Lock()
	for _, a := range cfg.BGP.Announce {
		want[a.Prefix] = s.anyEligibleLocked(cfg, a.Listeners)
	}
	s.mu.Unlock()

	b := &s.bgp
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sp == nil || b.withdrawing {
		return
	}
	for p, on := range want {
		cur, configured := b.announced[p]
		if !configured || cur == on {
			continue // left the configuration meanwhile, or unchanged
		}
		s.setAnnouncedLocked(p, on)
	}
}

// setAnnouncedLocked announces or withdraws p and records it. b.mu is held.
func (s *Server) setAnnouncedLocked(p netip.Prefix, on bool) {
	b := &s.bgp
	ctx, cancel := context.WithTimeout(context.Background(), bgpOpTimeout)
	defer cancel()
	if err := b.sp.SetAnnounced(ctx, p, on); err != nil {
		s.log.Error("bgp announcement not changed", zap.Stringer("prefix", p), zap.Bool("announce", on), zap.Error(err))
		return
	}
	b.announced[p] = on
	s.m.SetBGPAnnounced(p.String(), on)
}

// anyEligibleLocked reports whether one pool of the named listeners has an
// eligible member in its generation in service. s.mu is held.
func (s *Server) anyEligibleLocked(cfg *config.Config, listeners []string) bool {
	for _, lc := range cfg.Listeners {
		if !slices.Contains(listeners, lc.Name) {
			continue
		}
		if s.poolEligibleLocked(lc.Pool) {
			return true
		}
		for _, r := range lc.Routes {
			if s.poolEligibleLocked(r.Pool) {
				return true
			}
		}
	}
	return false
}

func (s *Server) poolEligibleLocked(name string) bool {
	lp := s.pools[name]
	if name == "" || lp == nil || lp.gen == nil {
		return false
	}
	for _, m := range lp.gen.bal.Members() {
		if m.Weight > 0 && m.Backend.Eligible() {
			return true
		}
	}
	return false
}

// reloadBGP applies the [bgp] table of cfg after a reload (old was in
// force). Called with s.mu held.
func (s *Server) reloadBGP(old, cfg *config.Config) {
	b := &s.bgp
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.withdrawing {
		return
	}
	switch {
	case cfg.BGP == nil && b.sp == nil:
		return
	case cfg.BGP == nil:
		s.stopSpeakerLocked()
		return
	case b.sp == nil:
		if err := s.newSpeakerLocked(cfg.BGP); err != nil {
			s.log.Error("bgp not started", zap.Error(err))
		}
	default:
		ctx, cancel := context.WithTimeout(context.Background(), bgpOpTimeout)
		defer cancel()
		s.setBGPPeers(cfg.BGP)
		if err := b.sp.Update(ctx, speakerConfig(cfg.BGP)); err != nil {
			s.log.Error("bgp peers not all updated", zap.Error(err))
		}
		keep := map[netip.Prefix]bool{}
		for _, a := range cfg.BGP.Announce {
			keep[a.Prefix] = true
			if _, ok := b.announced[a.Prefix]; !ok {
				b.announced[a.Prefix] = false
				s.m.SetBGPAnnounced(a.Prefix.String(), false)
			}
		}
		for p, on := range b.announced {
			if keep[p] {
				continue
			}
			if on {
				if err := b.sp.SetAnnounced(ctx, p, false); err != nil {
					s.log.Error("bgp withdraw failed", zap.Stringer("prefix", p), zap.Error(err))
				}
			}
			delete(b.announced, p)
			s.m.ForgetBGPPrefix(p.String())
		}
		b.cfg = cfg.BGP
	}
	s.kickBGP()
}

// stopSpeakerLocked withdraws everything, stops the speaker and forgets
// its series. b.mu is held.
func (s *Server) stopSpeakerLocked() {
	b := &s.bgp
	if b.sp == nil {
		return
	}
	b.sp.Stop()
	b.sp = nil
	for p := range b.announced {
		s.m.ForgetBGPPrefix(p.String())
	}
	b.announced = nil
	b.cfg = nil
	s.setBGPPeers(nil)
}

// withdrawBGP is the first step of Shutdown: the decision loop stops,
// every prefix is withdrawn, and the caller waits the returned delay
// (withdraw_delay when something was withdrawn, else 0) before closing
// the listeners.
func (s *Server) withdrawBGP() time.Duration {
	b := &s.bgp
	if b.stop != nil {
		select {
		case <-b.stop:
		default:
			close(b.stop)
		}
		<-b.done
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.withdrawing || b.sp == nil {
		b.withdrawing = true
		return 0
	}
	b.withdrawing = true
	var withdrawn []string
	for p, on := range b.announced {
		if on {
			s.setAnnouncedLocked(p, false)
			withdrawn = append(withdrawn, p.String())
		}
	}
	if len(withdrawn) == 0 {
		return 0
	}
	sort.Strings(withdrawn)
	s.log.Info("bgp: every prefix withdrawn, waiting before closing the listeners",
		zap.Strings("prefixes", withdrawn), zap.Duration("withdraw_delay", b.cfg.WithdrawDelay))
	return b.cfg.WithdrawDelay
}

// stopBGP ends the BGP sessions (last step of Shutdown).
func (s *Server) stopBGP() {
	b := &s.bgp
	b.mu.Lock()
	defer b.mu.Unlock()
	s.stopSpeakerLocked()
}

// BGPStatus is the status JSON's "bgp": the peers' sessions and each
// announcement's state.
type BGPStatus struct {
	Peers         []BGPPeerStatus         `json:"peers"`
	Announcements []BGPAnnouncementStatus `json:"announcements"`
}

// BGPPeerStatus is one configured peer.
type BGPPeerStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is the session's: "idle", "connect", "active", "opensent",
	// "openconfirm" or "established".
	State string     `json:"state"`
	Since *time.Time `json:"since"` // when State last changed; nil if never
}

// BGPAnnouncementStatus is one [[bgp.announce]] entry.
type BGPAnnouncementStatus struct {
	Prefix    string   `json:"prefix"`
	Listeners []string `json:"listeners"`
	Announced bool     `json:"announced"`
}

// bgpStatus is the status JSON's "bgp", nil without [bgp].
func (s *Server) bgpStatus() *BGPStatus {
	b := &s.bgp
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sp == nil || b.cfg == nil {
		return nil
	}
	st := &BGPStatus{Peers: []BGPPeerStatus{}, Announcements: []BGPAnnouncementStatus{}}
	for _, p := range b.sp.Status() {
		ps := BGPPeerStatus{Address: p.Address.String(), ASN: p.ASN, State: p.State}
		if !p.Since.IsZero() {
			since := p.Since
			ps.Since = &since
		}
		st.Peers = append(st.Peers, ps)
	}
	for _, a := range b.cfg.Announce {
		st.Announcements = append(st.Announcements, BGPAnnouncementStatus{
			Prefix: a.Prefix.String(), Listeners: a.Listeners, Announced: b.announced[a.Prefix],
		})
	}
	return st
}
