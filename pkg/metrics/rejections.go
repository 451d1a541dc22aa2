package metrics

import "github.com/prometheus/client_golang/prometheus"

// Reason is why a client connection (or a UDP datagram) was refused: the
// reason label of lbctl_connections_rejected_total. The zero Reason is no
// rejection; Inc ignores it.
type Reason uint8

const (
	ReasonMaxConnections     Reason = iota + 1 // over max_connections (TCP connections, UDP sessions)
	ReasonACL                                  // refused by allow/deny
	ReasonNoBackend                            // no eligible backend
	ReasonBackendUnavailable                   // every connect attempt failed
	ReasonClientLimit                          // max_connections_per_client, or the client table is full
	ReasonRateLimit                            // connection_rate_per_client
	ReasonProxyProtocol                        // no valid PROXY header (TCP only)
	ReasonTLSInspect                           // no complete, valid ClientHello in tls_inspect_timeout (TCP only)
	ReasonNoRoute                              // the ClientHello matched no route and there is no pool (TCP only)
	numReasons
)

var reasonLabels = [numReasons]string{
	ReasonMaxConnections:     "max_connections",
	ReasonACL:                "acl",
	ReasonNoBackend:          "no_backend",
	ReasonBackendUnavailable: "backend_unavailable",
	ReasonClientLimit:        "client_limit",
	ReasonRateLimit:          "rate_limit",
	ReasonProxyProtocol:      "proxy_protocol",
	ReasonTLSInspect:         "tls_inspect",
	ReasonNoRoute:            "no_route",
}

// String returns the label value, "" for the zero Reason.
func (r Reason) String() string {
	if r < numReasons {
		return reasonLabels[r]
	}
	return ""
}

// validFor reports whether a listener of protocol ("tcp" or "udp") can
// refuse for r: a UDP listener exports none of the TCP-only reasons.
func (r Reason) validFor(protocol string) bool {
	if r == 0 || r >= numReasons {
		return false
	}
	return protocol != "udp" || !r.tcpOnly()
}

// tcpOnly reports whether only a TCP listener can refuse for r. A UDP
// listener never reads a PROXY header (the config refuses
// accept_proxy_protocol on it), nor a TLS ClientHello (nor routes).
func (r Reason) tcpOnly() bool {
	switch r {
	case ReasonProxyProtocol, ReasonTLSInspect, ReasonNoRoute:
		return true
	}
	return false
}

// Rejections counts the refusals of one listener by reason. Inc is one
// atomic add: the children are resolved when the handle is made. Inc does
// nothing on a nil *Rejections, for the zero Reason, or for a reason the
// listener's protocol cannot produce.
type Rejections struct {
	by [numReasons]prometheus.Counter
}

// ForListener resolves the rejection counters of one listener of protocol
// ("tcp" or "udp"). Every reason the protocol can produce is created, so
// each shows at zero before the first rejection; the others are never
// exported.
func (m *Metrics) ForListener(protocol, listener string) *Rejections {
	r := &Rejections{}
	for reason := range numReasons {
		if reason.validFor(protocol) {
			r.by[reason] = m.Rejected.WithLabelValues(listener, reason.String())
		}
	}
	return r
}

// Inc counts one rejection for reason.
func (r *Rejections) Inc(reason Reason) {
	if r != nil && reason < numReasons {
		inc(r.by[reason])
	}
}
