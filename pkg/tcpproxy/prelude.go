package tcpproxy

import (
	"net/netip"

	"github.com/lbctl/lbctl/pkg/proxyheader"
	"go.uber.org/zap"
)

// Prelude is what the listener read from the client before handing the
// connection over (StartWith): a TLS ClientHello it routed on. The proxy
// writes Data to the backend it connects to, after the PROXY header if
// the pool sends one and in the same write, before any other byte; a
// backend that fails that write is one more failed connect, and the next
// one gets the same bytes. Data counts as bytes in.
type Prelude struct {
	Data []byte // the bytes read from the client, unchanged
	// SNI is the TLS server name ("" when the hello had none): the access
	// log's sni, and the PROXY v2 header's AUTHORITY TLV (with
	// Config.AuthorityTLV).
	SNI string
}

// first returns the bytes written to a backend as soon as it is
// connected: the PROXY header (HeaderFunc), with the AUTHORITY TLV when
// asked for, then the prelude's data. local, the header's destination,
// is asked only for a header (on a loop's socket it is a getsockname).
func (p *Proxy) first(local func() netip.AddrPort, clientAddr netip.AddrPort, pre *Prelude) []byte {
	if p.cfg.HeaderFunc == nil {
		return pre.Data // dial calls first only with a header or a prelude; no copy
	}
	b := p.cfg.HeaderFunc(clientAddr, local())
	if pre == nil {
		return b
	}
	if p.cfg.AuthorityTLV && pre.SNI != "" {
		b = proxyheader.AppendTLV(b, 0, proxyheader.TypeAuthority, []byte(pre.SNI))
	}
	return append(b, pre.Data...)
}

// sniField is the access log's sni: present for a connection whose hello
// was read, even without a server name.
func sniField(pre *Prelude) zap.Field {
	if pre == nil {
		return zap.Skip()
	}
	return zap.String("sni", pre.SNI)
}
