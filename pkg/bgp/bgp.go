// Package bgp announces lbctl's service addresses to routers with BGP, so
// that routers spread flows over several lbctl instances with ECMP. It is a
// thin speaker over GoBGP used as a library: it connects out to each
// configured peer (port 179 unless told otherwise) and listens on no port,
// so lbctl needs no privilege to run it; it announces and withdraws
// prefixes with the next hop set to its own address towards each peer (the
// local address of the BGP session), and it reports each peer's session
// state.
//
//	sp, err := bgp.New(bgp.Config{ASN: 65010, RouterID: netip.MustParseAddr("10.0.0.21"),
//		Peers: []bgp.Peer{{Address: netip.MustParseAddr("10.0.0.1"), ASN: 65000}}},
//		bgp.Options{Log: log, OnPeer: func(p bgp.PeerStatus) { ... }})
//	err = sp.Start(ctx)
//	err = sp.SetAnnounced(ctx, netip.MustParsePrefix("10.99.0.1/32"), true)
//	...
//	err = sp.Update(ctx, newCfg) // reload: only changed peers are touched
//	sp.Stop()                    // withdraws everything (CEASE to every peer)
//
// A lost peer is retried by GoBGP's connect loop: the session falls to
// Idle for 5 s (GoBGP's fixed idle hold time), the first connect comes 1 to
// 2 s later, and further connects every ConnectRetry to 2*ConnectRetry
// seconds; ConnectRetry is 5 s, so no two attempts are more than 10 s
// apart. An IPv4 prefix goes to the IPv4 peers and an IPv6 prefix to the
// IPv6 peers (the next hop must be an address of the prefix's family).
//
// The package decides nothing about when to announce: the server does
// (a prefix is announced while one of its listeners has an eligible
// backend). GoBGP's own goroutine (BgpServer.Serve) never returns, so a
// Speaker leaves that one goroutine behind after Stop; the speaker's own
// goroutines end.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgp "github.com/osrg/gobgp/v3/pkg/server"
	"go.uber.org/zap"
	apb "google.golang.org/protobuf/types/known/anypb"
)

// DefaultPort is the BGP port lbctl connects to.
const DefaultPort = 179

// ConnectRetry is GoBGP's connect-retry timer for every peer: attempts are
// spaced ConnectRetry to 2*ConnectRetry apart, so at most 10 s.
const ConnectRetry = 5 * time.Second

// Peer is one router lbctl connects to.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	Port    int // 0 = DefaultPort
}

func (p Peer) port() int {
	if p.Port == 0 {
		return DefaultPort
	}
	return p.Port
}

// Config is what the speaker needs to run.
type Config struct {
	ASN      uint32
	RouterID netip.Addr // IPv4
	Peers    []Peer     // addresses unique
}

// Options are the speaker's injected dependencies.
type Options struct {
	Log *zap.Logger // required
	// OnPeer, when set, is called after every change of a peer's session
	// between up (established) and down, from a goroutine of the speaker,
	// in order. It must not block for long; it may call Status.
	OnPeer func(PeerStatus)
}

// PeerStatus is one peer's session as the speaker sees it.
type PeerStatus struct {
	Address netip.Addr
	ASN     uint32
	// State is the BGP session state: "idle", "connect", "active",
	// "opensent", "openconfirm" or "established".
	State string
	Since time.Time  // when State last changed (or the peer was added)
	Local netip.Addr // the session's local address (the next hop); invalid while down
}

// Up reports whether the session is established.
func (p PeerStatus) Up() bool { return p.State == "established" }

// Speaker is one BGP speaker. Its methods are safe for concurrent use.
type Speaker struct {
	log    *zap.Logger
	onPeer func(PeerStatus)
	bgp    *gobgp.BgpServer

	mu        sync.Mutex // serialises Start, Update, SetAnnounced and Stop
	cfg       Config
	started   bool
	stopped   bool
	announced map[netip.Prefix][]byte // prefix -> GoBGP path uuid
	watch     context.CancelFunc      // ends the peer event watch

	stMu  sync.Mutex // guards peers and order; never held while calling out
	peers map[netip.Addr]*PeerStatus
	order []Peer // the configured peers, for Status
}

// New checks cfg and prepares a speaker; it connects nowhere yet.
func New(cfg Config, opts Options) (*Speaker, error) {
	if opts.Log == nil {
		return nil, errors.New("bgp: Log is required")
	}
	if err := check(cfg); err != nil {
		return nil, err
	}
	return &Speaker{
		log:       opts.Log,
		onPeer:    opts.OnPeer,
		cfg:       cfg,
		announced: map[netip.Prefix][]byte{},
		peers:     map[netip.Addr]*PeerStatus{},
		order:     cfg.Peers,
	}, nil
}

func check(cfg Config) error {
	if cfg.ASN == 0 {
		return errors.New("bgp: asn must not be 0")
	}
	if !cfg.RouterID.Is4() || cfg.RouterID.IsUnspecified() {
		return fmt.Errorf("bgp: router_id %v is not a non-zero IPv4 address", cfg.RouterID)
	}
	seen := map[netip.Addr]bool{}
	for _, p := range cfg.Peers {
		if !p.Address.IsValid() || p.ASN == 0 || p.Port < 0 || p.Port > 65535 {
			return fmt.Errorf("bgp: bad peer %v (asn %d, port %d)", p.Address, p.ASN, p.Port)
		}
		if seen[p.Address] {
			return fmt.Errorf("bgp: peer %v listed twice", p.Address)
		}
		seen[p.Address] = true
	}
	return nil
}

// Start starts GoBGP (listening on no port) and connects to every peer.
func (s *Speaker) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("bgp: already started")
	}
	s.bgp = gobgp.NewBgpServer(gobgp.LoggerOption(newLogger(s.log)))
	go s.bgp.Serve()
	s.started = true
	return s.startLocked(ctx)
}

// startLocked starts the BGP instance of s.cfg, its peer watch, its peers
// and the announced paths.
func (s *Speaker) startLocked(ctx context.Context) error {
	err := s.bgp.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:        s.cfg.ASN,
		RouterId:   s.cfg.RouterID.String(),
		ListenPort: -1, // connect out only: no port 179, no privilege
	}})
	if err != nil {
		return fmt.Errorf("bgp: start: %w", err)
	}
	// WatchEvent's goroutine ends when wctx is canceled.
	wctx, cancel := context.WithCancel(context.Background())
	err = s.bgp.WatchEvent(wctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.peerEvent)
	if err != nil {
		cancel()
		return fmt.Errorf("bgp: watch peers: %w", err)
	}
	s.watch = cancel
	for _, p := range s.cfg.Peers {
		if err := s.addPeerLocked(ctx, p); err != nil {
			return err
		}
	}
	for prefix := range s.announced {
		uuid, err := s.addPath(ctx, prefix)
		if err != nil {
			return err
		}
		s.announced[prefix] = uuid
	}
	return nil
}

func (s *Speaker) addPeerLocked(ctx context.Context, p Peer) error {
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	if p.Address.Is6() && !p.Address.Is4In6() {
		family = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
	}
	err := s.bgp.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN},
		Transport: &api.Transport{
			RemotePort:  uint32(p.port()),
			PassiveMode: false, // lbctl connects out
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry: uint64(ConnectRetry / time.Second),
		}},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: family, Enabled: true}}},
	}})
	if err != nil {
		return fmt.Errorf("bgp: add peer %s: %w", p.Address, err)
	}
	s.stMu.Lock()
	s.peers[p.Address] = &PeerStatus{Address: p.Address, ASN: p.ASN, State: "idle", Since: time.Now()}
	s.stMu.Unlock()
	return nil
}

func (s *Speaker) deletePeerLocked(ctx context.Context, p Peer) error {
	err := s.bgp.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()})
	s.stMu.Lock()
	st := s.peers[p.Address]
	delete(s.peers, p.Address)
	s.stMu.Unlock()
	if st != nil && st.Up() {
		s.log.Info("bgp peer down", zap.Stringer("peer", p.Address), zap.String("reason", "removed from the configuration"))
	}
	if err != nil {
		return fmt.Errorf("bgp: delete peer %s: %w", p.Address, err)
	}
	return nil
}

// peerEvent records a peer's new session state; an up/down change is
// logged and reported to OnPeer.
func (s *Speaker) peerEvent(r *api.WatchEventResponse) {
	ev := r.GetPeer()
	if ev == nil || ev.GetType() != api.WatchEventResponse_PeerEvent_STATE || ev.GetPeer().GetState() == nil {
		return
	}
	ps := ev.GetPeer().GetState()
	addr, err := netip.ParseAddr(ps.GetNeighborAddress())
	if err != nil {
		return
	}
	addr = addr.Unmap()
	state := sessionState(ps.GetSessionState())
	s.stMu.Lock()
	st := s.peers[addr]
	if st == nil || st.State == state {
		s.stMu.Unlock()
		return
	}
	wasUp := st.Up()
	st.State, st.Since = state, time.Now()
	st.Local = netip.Addr{}
	if st.Up() {
		if la, err := netip.ParseAddr(ev.GetPeer().GetTransport().GetLocalAddress()); err == nil {
			st.Local = la.Unmap()
		}
	}
	snap := *st
	s.stMu.Unlock()
	if wasUp == snap.Up() {
		return
	}
	if snap.Up() {
		s.log.Info("bgp peer up", zap.Stringer("peer", addr), zap.Uint32("asn", snap.ASN), zap.Stringer("local", snap.Local))
	} else {
		s.log.Info("bgp peer down", zap.Stringer("peer", addr), zap.Uint32("asn", snap.ASN), zap.String("state", state))
	}
	if s.onPeer != nil {
		s.onPeer(snap)
	}
}

func sessionState(st api.PeerState_SessionState) string {
	switch st {
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "idle"
}

// SetAnnounced announces prefix to the peers of its family (on) or
// withdraws it (off). Setting the state it already has does nothing. An
// announcement made before Start is sent once the speaker starts.
func (s *Speaker) SetAnnounced(ctx context.Context, prefix netip.Prefix, on bool) error {
	prefix = prefix.Masked()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("bgp: stopped")
	}
	uuid, was := s.announced[prefix]
	if was == on {
		return nil
	}
	if !on {
		if s.started {
			if err := s.bgp.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Uuid: uuid}); err != nil {
				return fmt.Errorf("bgp: withdraw %s: %w", prefix, err)
			}
		}
		delete(s.announced, prefix)
		s.log.Info("bgp withdraw", zap.Stringer("prefix", prefix))
		return nil
	}
	if s.started {
		var err error
		if uuid, err = s.addPath(ctx, prefix); err != nil {
			return err
		}
	}
	s.announced[prefix] = uuid
	s.log.Info("bgp announce", zap.Stringer("prefix", prefix))
	return nil
}

// addPath adds prefix to GoBGP's global table with an unspecified next
// hop, which GoBGP replaces by the session's local address towards each
// peer.
func (s *Speaker) addPath(ctx context.Context, prefix netip.Prefix) ([]byte, error) {
	nlri, err := apb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
	if err != nil {
		return nil, err
	}
	origin, err := apb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return nil, err
	}
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	var nh *apb.Any
	if prefix.Addr().Is4() {
		nh, err = apb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
	} else {
		family = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
		nh, err = apb.New(&api.MpReachNLRIAttribute{Family: family, NextHops: []string{"::"}, Nlris: []*apb.Any{nlri}})
	}
	if err != nil {
		return nil, err
	}
	resp, err := s.bgp.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: &api.Path{
		Family: family, Nlri: nlri, Pattrs: []*apb.Any{origin, nh},
	}})
	if err != nil {
		return nil, fmt.Errorf("bgp: announce %s: %w", prefix, err)
	}
	return resp.GetUuid(), nil
}

// Announced returns the prefixes announced now, sorted.
func (s *Speaker) Announced() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Prefix, 0, len(s.announced))
	for p := range s.announced {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// Status returns every configured peer's session, in configuration order.
func (s *Speaker) Status() []PeerStatus {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	out := make([]PeerStatus, 0, len(s.order))
	for _, p := range s.order {
		if st := s.peers[p.Address]; st != nil {
			out = append(out, *st)
		} else {
			out = append(out, PeerStatus{Address: p.Address, ASN: p.ASN, State: "idle"})
		}
	}
	return out
}

// Update applies a new configuration. Peers that stay with the same ASN
// and port keep their session; removed peers get a CEASE; added ones are
// connected. A change of the local ASN or router ID restarts every session
// (the announcements are kept and sent again).
func (s *Speaker) Update(ctx context.Context, cfg Config) error {
	if err := check(cfg); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("bgp: stopped")
	}
	old := s.cfg
	s.cfg = cfg
	s.stMu.Lock()
	s.order = cfg.Peers
	s.stMu.Unlock()
	if !s.started {
		return nil
	}
	if old.ASN != cfg.ASN || old.RouterID != cfg.RouterID {
		s.stopLocked(ctx)
		return s.startLocked(ctx)
	}
	want := map[netip.Addr]Peer{}
	for _, p := range cfg.Peers {
		want[p.Address] = p
	}
	var errs []error
	for _, p := range old.Peers {
		if n, ok := want[p.Address]; !ok || n.ASN != p.ASN || n.port() != p.port() {
			if err := s.deletePeerLocked(ctx, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	have := map[netip.Addr]Peer{}
	for _, p := range old.Peers {
		have[p.Address] = p
	}
	for _, p := range cfg.Peers {
		if o, ok := have[p.Address]; !ok || o.ASN != p.ASN || o.port() != p.port() {
			if err := s.addPeerLocked(ctx, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// stopLocked ends every session (CEASE), forgets the peers and stops the
// peer watch; the announcements stay recorded in s.announced.
func (s *Speaker) stopLocked(ctx context.Context) {
	if err := s.bgp.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		s.log.Warn("bgp stop", zap.Error(err))
	}
	if s.watch != nil {
		s.watch()
		s.watch = nil
	}
	var downs []PeerStatus
	s.stMu.Lock()
	for a, st := range s.peers {
		if st.Up() {
			s.log.Info("bgp peer down", zap.Stringer("peer", a), zap.String("reason", "speaker stopped"))
			down := *st
			down.State, down.Since, down.Local = "idle", time.Now(), netip.Addr{}
			downs = append(downs, down)
		}
	}
	clear(s.peers)
	s.stMu.Unlock()
	if s.onPeer != nil {
		for _, d := range downs {
			s.onPeer(d)
		}
	}
}

// Stop withdraws every announcement (each peer gets a CEASE and drops the
// routes learned from lbctl) and stops the speaker. It is idempotent.
func (s *Speaker) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	if !s.started {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.stopLocked(ctx)
	clear(s.announced)
}
