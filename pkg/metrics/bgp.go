package metrics

import "github.com/prometheus/client_golang/prometheus"

// bgpSeries holds the BGP speaker's series. Both exist, at 0 or 1, while
// their peer or prefix is configured; the server deletes them when it
// leaves the configuration.
type bgpSeries struct {
	// BGPPeerUp is lbctl_bgp_peer_up{peer}: 1 while the session with the
	// peer (its configured address) is established.
	BGPPeerUp *prometheus.GaugeVec
	// BGPAnnounced is lbctl_bgp_announced{prefix}: 1 while the prefix (as
	// configured) is announced.
	BGPAnnounced *prometheus.GaugeVec
}

func (m *Metrics) newBGP(reg prometheus.Registerer) {
	m.BGPPeerUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lbctl_bgp_peer_up",
		Help: "1 while the BGP session with the peer is established, else 0.",
	}, []string{"peer"})
	m.BGPAnnounced = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lbctl_bgp_announced",
		Help: "1 while the prefix is announced to the BGP peers, else 0.",
	}, []string{"prefix"})
	reg.MustRegister(m.BGPPeerUp, m.BGPAnnounced)
}

// SetBGPPeerUp sets lbctl_bgp_peer_up for peer.
func (m *Metrics) SetBGPPeerUp(peer string, up bool) {
	m.BGPPeerUp.WithLabelValues(peer).Set(bgpGauge(up))
}

// SetBGPAnnounced sets lbctl_bgp_announced for prefix.
func (m *Metrics) SetBGPAnnounced(prefix string, on bool) {
	m.BGPAnnounced.WithLabelValues(prefix).Set(bgpGauge(on))
}

// ForgetBGPPeer deletes the series of a peer that left the configuration.
func (m *Metrics) ForgetBGPPeer(peer string) { m.BGPPeerUp.DeleteLabelValues(peer) }

// ForgetBGPPrefix deletes the series of a prefix that left the configuration.
func (m *Metrics) ForgetBGPPrefix(prefix string) { m.BGPAnnounced.DeleteLabelValues(prefix) }

func bgpGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
