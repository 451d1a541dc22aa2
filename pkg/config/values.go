package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/go-sockaddr/template"
)

// render expands a go-sockaddr template ("{{ GetPrivateIP }}:8080").
// Strings without "{{" are returned as they are. A template that renders
// to nothing is an error.
func render(s string) (string, error) {
	if !strings.Contains(s, "{{") {
		return s, nil
	}
	out, err := template.Parse(s)
	if err != nil {
		return "", fmt.Errorf("invalid template: %v", err)
	}
	out = strings.TrimSpace(out)
	if out == "" {
		return "", fmt.Errorf("template %s rendered to nothing", quoteTemplate(s))
	}
	return out, nil
}

// quoteTemplate quotes a template for messages, TOML-literal style when
// it can so that its inner double quotes stay readable.
func quoteTemplate(s string) string {
	if !strings.ContainsAny(s, "'\n") {
		return "'" + s + "'"
	}
	return strconv.Quote(s)
}

// renderBind renders a bind template and parses the single address it
// must produce.
func renderBind(s string) (netip.AddrPort, error) {
	out, err := render(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if f := strings.Fields(out); len(f) > 1 {
		return netip.AddrPort{}, fmt.Errorf("template %s rendered to several addresses: %q", quoteTemplate(s), out)
	}
	ap, err := parseBind(out)
	if err != nil && out != s {
		err = fmt.Errorf("%v (rendered from %s)", err, quoteTemplate(s))
	}
	return ap, err
}

// parseBind parses a listening address: an IP (IPv6 in brackets) and a
// port. Host names are not allowed. Port 0 asks the kernel for a free port
// (tests use it); such binds never conflict with each other.
func parseBind(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid address %q: want IP:port (IPv6 in brackets)", s)
	}
	if host == "" {
		return netip.AddrPort{}, fmt.Errorf("invalid address %q: empty host (use 0.0.0.0 or [::] for every address)", s)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid address %q: host must be an IP address", s)
	}
	if port == "0" {
		return netip.AddrPortFrom(ip, 0), nil
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid address %q: port must be 1-65535, or 0 for any free port", s)
	}
	return netip.AddrPortFrom(ip, p), nil
}

// checkBackendAddress checks a backend address: host:port where host is an
// IP (IPv6 in brackets) or a host name. It returns a normalised form used
// to find duplicates.
func checkBackendAddress(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("invalid address %q: want host:port (IPv6 in brackets)", s)
	}
	p, err := parsePort(port)
	if err != nil {
		return "", fmt.Errorf("invalid address %q: %v", s, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), p).String(), nil
	}
	if !validHostname(host) {
		return "", fmt.Errorf("invalid address %q: host is neither an IP address nor a host name", s)
	}
	return strings.ToLower(strings.TrimSuffix(host, ".")) + ":" + strconv.Itoa(int(p)), nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(s)
	if err != nil || !isDigits(s) || n < 1 || n > 65535 {
		return 0, errors.New("port must be 1-65535")
	}
	return uint16(n), nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// validHostname accepts DNS names made of letters, digits, '-' and '_'
// in dot-separated labels of at most 63 bytes.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// parsePrefix parses a CIDR, or a bare IP meaning /32 or /128. Host bits
// are cleared (10.1.2.3/8 is 10.0.0.0/8) and IPv4-mapped IPv6 prefixes
// (::ffff:10.0.0.0/104) become IPv4 prefixes, so Match sees one form.
func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		a = a.WithZone("")
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// parseStatus parses one expect_status entry written as a string:
// "200", "2xx" or "200-299".
func parseStatus(s string) (StatusRange, error) {
	bad := fmt.Errorf(`invalid status %q (want 200, "2xx" or "200-299")`, s)
	if len(s) == 3 && s[1] == 'x' && s[2] == 'x' && s[0] >= '1' && s[0] <= '5' {
		lo := int(s[0]-'0') * 100
		return StatusRange{lo, lo + 99}, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	if !isDigits(lo) || !isDigits(hi) || len(lo) > 3 || len(hi) > 3 {
		return StatusRange{}, bad
	}
	l, _ := strconv.Atoi(lo)
	h, _ := strconv.Atoi(hi)
	return checkStatus(StatusRange{l, h}, s)
}

func checkStatus(r StatusRange, written any) (StatusRange, error) {
	if r.Lo < 100 || r.Hi > 599 || r.Lo > r.Hi {
		return StatusRange{}, fmt.Errorf("invalid status %v (want codes 100-599, low-high)", written)
	}
	return r, nil
}

// unescapeBytes decodes the escapes that send/expect allow on top of
// TOML's own: \r \n \t \\ and \xHH for any byte. They matter in TOML
// literal strings ('PING\r\n') and in basic strings written "\\x00";
// in a basic string TOML has already turned "\r\n" into CR LF.
func unescapeBytes(s string) ([]byte, error) {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		if i+1 >= len(s) {
			return nil, errors.New(`trailing backslash (write \\ for a backslash)`)
		}
		i++
		switch c := s[i]; c {
		case 'r':
			b = append(b, '\r')
		case 'n':
			b = append(b, '\n')
		case 't':
			b = append(b, '\t')
		case '\\':
			b = append(b, '\\')
		case 'x':
			if i+3 > len(s) {
				return nil, errors.New(`invalid escape: \x needs two hex digits`)
			}
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return nil, errors.New(`invalid escape: \x needs two hex digits`)
			}
			b = append(b, byte(v))
			i += 2
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return nil, fmt.Errorf(`invalid escape \%c (want \r, \n, \t, \\ or \xHH)`, r)
		}
	}
	return b, nil
}
