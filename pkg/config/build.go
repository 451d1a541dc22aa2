package config

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// This file knows the schema: which keys each table has, their defaults
// and the checks that involve more than one key.

// listenerDef is a decoded listener with what cross-checks need.
type listenerDef struct {
	l      *Listener
	t      *table
	addr   netip.AddrPort
	bindOK bool
}

// bindUse is one bound address for the conflict check.
type bindUse struct {
	path     string // key path of the bind ("listeners.web.bind", "admin.bind")
	line     int
	protocol string
	addr     netip.AddrPort
}

func (d *decoder) config(raw map[string]any) *Config {
	root := d.root(raw)
	cfg := &Config{
		ShutdownTimeout: DefaultShutdownTimeout,
		Log:             Log{Level: "info", Format: "json", Access: true},
		Pools:           map[string]*Pool{},
	}
	if v, ok := root.duration("shutdown_timeout", false); ok {
		cfg.ShutdownTimeout = v
	}
	if s, ok := root.str("state_file"); ok {
		switch {
		case s == "":
			// "" is the default: no state file.
		case strings.TrimSpace(s) == "":
			root.errf("state_file", `must not be blank; write "" (or leave the key out) for no state file`)
		default:
			cfg.StateFile = d.relPath(s)
		}
	}
	cfg.ControlSocket = d.controlSocket(root)
	if t, ok := root.sub("log"); ok {
		d.log(t, &cfg.Log)
	}
	var binds []bindUse
	if t, ok := root.sub("admin"); ok {
		var use *bindUse
		cfg.Admin, use = d.admin(t)
		cfg.tokenFileLine = t.keyLine("token_file")
		if use != nil {
			binds = append(binds, *use)
		}
	}

	var defs []*listenerDef
	listenersTable, hasListeners := root.sub("listeners")
	if hasListeners {
		for _, n := range listenersTable.named() {
			defs = append(defs, d.listener(n.name, n.t))
		}
	}
	if len(defs) == 0 && (!root.has("listeners") || hasListeners) {
		root.errf("listeners", "at least one listener is required")
	}

	// A pool's protocol is that of the listeners using it.
	usage := map[string]map[string]bool{}
	for _, def := range defs {
		if usage[def.l.Pool] == nil {
			usage[def.l.Pool] = map[string]bool{}
		}
		usage[def.l.Pool][def.l.Protocol] = true
		for _, r := range def.l.Routes { // pools used through routes are tcp pools
			if usage[r.Pool] == nil {
				usage[r.Pool] = map[string]bool{}
			}
			usage[r.Pool]["tcp"] = true
		}
	}
	declared := map[string]bool{}
	if t, ok := root.sub("pools"); ok {
		for k := range t.m {
			declared[k] = true
		}
		for _, n := range t.named() {
			proto := "tcp"
			if u := usage[n.name]; u["udp"] && !u["tcp"] {
				proto = "udp"
			}
			var lines []int
			cfg.Pools[n.name], lines = d.pool(n.name, n.t, proto)
			if cfg.backendLines == nil {
				cfg.backendLines = map[string][]int{}
			}
			cfg.backendLines[n.name] = lines
			if usage[n.name]["udp"] && cfg.Pools[n.name].ProxyProtocol == "v1" {
				n.t.errf("proxy_protocol", `v1 cannot carry UDP and a udp listener uses this pool: use "v2"`)
			}
		}
	}

	for _, def := range defs {
		if p := def.l.Pool; p != "" && !declared[p] {
			def.t.errf("pool", "unknown pool %q", p)
		}
		d.checkRoutePools(def, declared)
		if def.bindOK {
			binds = append(binds, bindUse{
				path: def.t.keyPath("bind"), line: def.t.keyLine("bind"),
				protocol: def.l.Protocol, addr: def.addr,
			})
		}
		cfg.Listeners = append(cfg.Listeners, def.l)
	}
	d.checkBinds(binds)
	if t, ok := root.sub("bgp"); ok {
		names := make(map[string]bool, len(defs))
		for _, def := range defs {
			names[def.l.Name] = true
		}
		cfg.BGP = d.bgp(t, names)
	}
	sort.Slice(cfg.Listeners, func(i, j int) bool { return cfg.Listeners[i].Name < cfg.Listeners[j].Name })
	root.finish()
	return cfg
}

func (d *decoder) log(t *table, l *Log) {
	if v, ok := t.oneOf("level", "debug", "info", "warn", "error"); ok {
		l.Level = v
	}
	if v, ok := t.oneOf("format", "json", "console"); ok {
		l.Format = v
	}
	if v, ok := t.boolean("access"); ok {
		l.Access = v
	}
	t.finish()
}

func (d *decoder) admin(t *table) (*Admin, *bindUse) {
	a := &Admin{
		Bind:  DefaultAdminBind,
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	}
	use := &bindUse{path: t.keyPath("bind"), line: t.keyLine("bind"), protocol: "tcp",
		addr: netip.MustParseAddrPort(DefaultAdminBind)}
	if s, ok := t.str("bind"); ok {
		if ap, err := renderBind(s); err != nil {
			t.errf("bind", "%v", err)
			use = nil
		} else {
			a.Bind, use.addr = ap.String(), ap
		}
	}
	if p, ok := t.prefixes("allow"); ok {
		if len(p) == 0 {
			t.errf("allow", `empty list would refuse every client; leave the key out for loopback only, or allow ["0.0.0.0/0", "::/0"] for everyone`)
		}
		a.Allow = p
	}
	if s, ok := t.str("token_file"); ok {
		if strings.TrimSpace(s) == "" {
			t.errf("token_file", "must not be empty; leave the key out to need no token")
		}
		a.TokenFile = s
	}
	if t.has("hosts") {
		a.Hosts = t.hosts("hosts")
	}
	t.finish()
	return a, use
}

func (d *decoder) listener(name string, t *table) *listenerDef {
	l := &Listener{
		Name:                 name,
		Protocol:             DefaultProtocol,
		IdleTimeout:          DefaultIdleTimeout,
		UnrepliedTimeout:     DefaultUnrepliedTimeout,
		ProxyProtocolTimeout: DefaultProxyProtocolTimeout,
	}
	def := &listenerDef{l: l, t: t}
	if name == "" {
		t.errf("", "a listener name must not be empty")
	}
	proto, protoOK := t.oneOf("protocol", "tcp", "udp")
	if protoOK {
		l.Protocol = proto
	}
	protoOK = protoOK || !t.has("protocol")

	if s, ok := t.str("bind"); ok {
		l.BindTemplate = s
		if ap, err := renderBind(s); err != nil {
			t.errf("bind", "%v", err)
		} else {
			l.Bind, def.addr, def.bindOK = ap.String(), ap, true
		}
	} else if !t.has("bind") {
		t.errf("bind", "required: the IP:port to listen on")
	}

	if s, ok := t.str("pool"); ok {
		l.Pool = s
		if s == "" {
			t.errf("pool", "must name the pool that serves this listener")
		}
	} else if !t.has("pool") && !t.has("routes") {
		t.errf("pool", "required: the pool that serves this listener")
	}

	if v, ok := t.integer("max_connections", 0); ok {
		l.MaxConnections = v
	}
	if v, ok := t.duration("idle_timeout", true); ok {
		l.IdleTimeout = v
	}
	if v, ok := t.duration("half_close_timeout", false); ok {
		l.HalfCloseTimeout = v
	}
	if v, ok := t.duration("unreplied_timeout", true); ok {
		l.UnrepliedTimeout = v
	}
	l.Allow, _ = t.prefixes("allow")
	l.Deny, _ = t.prefixes("deny")
	if v, ok := t.integer("max_connections_per_client", 0); ok {
		l.MaxConnectionsPerClient = v
	}
	if v, ok := t.number("connection_rate_per_client"); ok {
		l.ConnectionRatePerClient = v
	}
	if v, ok := t.integer("connection_burst_per_client", 0); ok {
		l.ConnectionBurstPerClient = v
	}
	if v, ok := t.boolean("accept_proxy_protocol"); ok {
		l.AcceptProxyProtocol = v
	}
	trusted, trustedOK := t.prefixes("trusted_proxies")
	l.TrustedProxies = trusted
	if v, ok := t.duration("proxy_protocol_timeout", true); ok {
		l.ProxyProtocolTimeout = v
	}
	if v, ok := t.integer("responses", 0); ok {
		l.Responses = v
	}

	if protoOK {
		// responses = 0 is the default and harmless anywhere (the SPEC's
		// reference block sets it on a tcp listener).
		if l.Protocol == "tcp" && l.Responses != 0 {
			t.errf("responses", `only valid with protocol = "udp" (0 = off is allowed)`)
		}
		if l.Protocol == "tcp" && t.has("unreplied_timeout") {
			t.errf("unreplied_timeout", `only valid with protocol = "udp"`)
		}
		if l.Protocol == "udp" && t.has("half_close_timeout") {
			t.errf("half_close_timeout", `only valid with protocol = "tcp"`)
		}
		if l.Protocol == "udp" && l.AcceptProxyProtocol {
			t.errf("accept_proxy_protocol", `only valid with protocol = "tcp"`)
		}
	}
	if l.AcceptProxyProtocol && len(trusted) == 0 && (trustedOK || !t.has("trusted_proxies")) {
		line := t.keyLine("accept_proxy_protocol")
		if t.has("trusted_proxies") {
			line = t.keyLine("trusted_proxies")
		}
		d.add(t.keyPath("trusted_proxies"), line,
			"required (non-empty) with accept_proxy_protocol = true: the peers allowed to send PROXY headers")
	}
	d.routes(t, l) // routes.go
	t.finish()
	return def
}

// prefixes decodes a CIDR list. Each entry is a CIDR, a bare IP (/32 or
// /128) or a go-sockaddr template rendering to one or more of those
// separated by spaces. ok is false when the key is absent or any entry is
// bad.
func (t *table) prefixes(key string) (out []netip.Prefix, ok bool) {
	items, ok := t.array(key)
	if !ok {
		return nil, false
	}
	out = []netip.Prefix{}
	for _, it := range items {
		s, isString := it.v.(string)
		if !isString {
			t.d.add(it.path, it.line, "expected a CIDR string, got %s", tomlType(it.v))
			ok = false
			continue
		}
		rendered, err := render(s)
		if err != nil {
			t.d.add(it.path, it.line, "%v", err)
			ok = false
			continue
		}
		for _, f := range strings.Fields(rendered) {
			p, err := parsePrefix(f)
			if err != nil {
				if rendered != s {
					err = fmt.Errorf("%v (rendered from %s)", err, quoteTemplate(s))
				}
				t.d.add(it.path, it.line, "%v", err)
				ok = false
				continue
			}
			out = append(out, p)
		}
	}
	return out, ok
}

// checkBinds reports two binds of one protocol that would take the same
// port: the same address, or a wildcard (0.0.0.0 covers IPv4, [::] covers
// both families) and any address. The error goes to the later one. Port 0
// (any free port) never conflicts.
func (d *decoder) checkBinds(binds []bindUse) {
	sort.SliceStable(binds, func(i, j int) bool { return binds[i].line < binds[j].line })
	for i, b := range binds {
		for _, prev := range binds[:i] {
			if prev.protocol == b.protocol && overlap(prev.addr, b.addr) {
				d.add(b.path, b.line, "%s address %s conflicts with %s (%s, line %d)",
					b.protocol, b.addr, prev.path, prev.addr, prev.line)
				break
			}
		}
	}
}

func overlap(a, b netip.AddrPort) bool {
	if a.Port() != b.Port() || a.Port() == 0 {
		return false
	}
	x, y := a.Addr().Unmap(), b.Addr().Unmap()
	covers := func(w, o netip.Addr) bool {
		return w.IsUnspecified() && (w.Is6() || o.Is4())
	}
	return x == y || covers(x, y) || covers(y, x)
}

// pool decodes one pool; lines are the lines of its backends' address
// keys, in the order of Pool.Backends.
func (d *decoder) pool(name string, t *table, proto string) (*Pool, []int) {
	p := &Pool{
		Name:           name,
		Algorithm:      DefaultAlgorithm,
		Protocol:       proto,
		ConnectTimeout: DefaultConnectTimeout,
		Retries:        DefaultRetries,
		ProxyProtocol:  "none",
		MaxFails:       DefaultMaxFails,
		FailTimeout:    DefaultFailTimeout,
	}
	if name == "" {
		t.errf("", "a pool name must not be empty")
	}
	if v, ok := t.oneOf("algorithm", "round-robin", "least-connections", "ip-hash", "maglev"); ok {
		p.Algorithm = v
	}
	d.hashing(t, p)
	if v, ok := t.duration("connect_timeout", true); ok {
		p.ConnectTimeout = v
	}
	if v, ok := t.integer("retries", 0); ok {
		p.Retries = v
	}
	if v, ok := t.oneOf("proxy_protocol", "none", "v1", "v2"); ok {
		p.ProxyProtocol = v
	}
	if v, ok := t.integer("max_fails", 0); ok {
		p.MaxFails = v
	}
	if v, ok := t.duration("fail_timeout", false); ok {
		p.FailTimeout = v
		if v == 0 && p.MaxFails > 0 {
			t.errf("fail_timeout", "must be greater than 0 when max_fails > 0 (max_fails = 0 turns passive checks off)")
		}
	}
	if v, ok := t.duration("slow_start", false); ok {
		p.SlowStart = v
	}
	if v, ok := t.duration("drain_timeout", false); ok {
		p.DrainTimeout = v
	}

	backends, _ := t.tables("backends")
	p.Discover = d.discovers(t)
	noBackends := !t.has("backends") || lenArray(t.m["backends"]) == 0
	noDiscover := !t.has("discover") || lenArray(t.m["discover"]) == 0
	if noBackends && noDiscover {
		t.errf("backends", "a pool needs at least one backend or a discover source")
	}
	var lines []int
	seen := map[string]*table{}
	for _, bt := range backends {
		lines = append(lines, bt.keyLine("address"))
		b := Backend{Weight: DefaultWeight}
		if s, ok := bt.str("address"); ok {
			b.Address = s
			if norm, err := checkBackendAddress(s); err != nil {
				bt.errf("address", "%v", err)
			} else if first, dup := seen[norm]; dup {
				bt.errf("address", "duplicate backend %q (first at %s, line %d)",
					s, first.path, first.keyLine("address"))
			} else {
				seen[norm] = bt
			}
		} else if !bt.has("address") {
			bt.errf("address", "required: the backend's host:port")
		}
		if v, ok := bt.integer("weight", 0); ok {
			if v > MaxWeight {
				bt.errf("weight", "must be at most %d, got %d", MaxWeight, v)
			}
			b.Weight = v
		}
		if v, ok := bt.boolean("backup"); ok {
			b.Backup = v
		}
		bt.finish()
		p.Backends = append(p.Backends, b)
	}

	health, hasHealth := t.sub("health")
	p.Health = d.health(health, hasHealth, proto)
	t.finish()
	return p, lines
}

func lenArray(v any) int {
	switch a := v.(type) {
	case []any:
		return len(a)
	case []map[string]any:
		return len(a)
	}
	return -1
}

func (d *decoder) health(t *table, present bool, proto string) Health {
	h := Health{
		Check:        "tcp",
		Interval:     DefaultHealthInterval,
		Timeout:      DefaultHealthTimeout,
		Rise:         DefaultRise,
		Fall:         DefaultFall,
		Path:         DefaultHealthPath,
		ExpectStatus: []StatusRange{{200, 200}},
	}
	if proto == "udp" {
		h.Check = "none"
	}
	if !present {
		return h
	}
	check, checkOK := t.oneOf("check", "tcp", "http", "tls", "https", "send-expect", "none")
	if checkOK {
		h.Check = check
	}
	checkOK = checkOK || !t.has("check")
	if v, ok := t.duration("interval", true); ok {
		h.Interval = v
	}
	if v, ok := t.duration("timeout", true); ok {
		h.Timeout = v
	}
	if v, ok := t.integer("rise", 1); ok {
		h.Rise = v
	}
	if v, ok := t.integer("fall", 1); ok {
		h.Fall = v
	}
	if v, ok := t.integer("port", 0); ok {
		if v > 65535 {
			t.errf("port", "must be at most 65535, got %d", v)
		}
		h.Port = v
	}
	if s, ok := t.str("path"); ok {
		switch {
		case !strings.HasPrefix(s, "/"):
			t.errf("path", `must start with "/", got %q`, s)
		case hasSpaceOrControl(s):
			t.errf("path", "must not contain spaces or control characters, got %q", s)
		}
		h.Path = s
	}
	if s, ok := t.str("host"); ok {
		if s == "" || hasSpaceOrControl(s) {
			t.errf("host", "must be a non-empty host name without spaces, got %q", s)
		}
		h.Host = s
	}
	if r, ok := t.statusRanges("expect_status"); ok {
		h.ExpectStatus = r
	}
	if s, ok := t.str("server_name"); ok {
		if !validServerName(s) {
			t.errf("server_name", "must be a DNS host name (not an IP address: SNI cannot carry one), got %q", s)
		}
		h.ServerName = s
	}
	if s, ok := t.str("send"); ok {
		if b, err := unescapeBytes(s); err != nil {
			t.errf("send", "%v", err)
		} else {
			h.Send = b
		}
	}
	if s, ok := t.str("expect"); ok {
		if b, err := unescapeBytes(s); err != nil {
			t.errf("expect", "%v", err)
		} else {
			h.Expect = b
		}
	}
	if checkOK {
		for _, k := range []string{"path", "host", "expect_status"} {
			if h.Check != "http" && h.Check != "https" && t.has(k) {
				t.errf(k, `only valid with check = "http" or "https"`)
			}
		}
		if h.Check != "tls" && h.Check != "https" && t.has("server_name") {
			t.errf("server_name", `only valid with check = "tls" or "https"`)
		}
		for _, k := range []string{"send", "expect"} {
			if h.Check != "send-expect" && t.has(k) {
				t.errf(k, `only valid with check = "send-expect"`)
			}
		}
		if h.Check == "send-expect" && len(h.Expect) == 0 {
			if s, isString := t.m["expect"].(string); !t.has("expect") || isString && s == "" {
				t.errf("expect", `required (non-empty) with check = "send-expect"`)
			}
		}
		if h.Check == "send-expect" && len(h.Expect) > maxExpect {
			t.errf("expect", "at most %d bytes (the check reads no more than that)", maxExpect)
		}
		if h.Check == "send-expect" && proto == "udp" && len(h.Send) == 0 && !t.has("send") {
			// Over UDP there is nothing to read until a datagram is sent.
			t.errf("", `send is required (non-empty) for check = "send-expect" on a udp pool`)
		} else if h.Check == "send-expect" && proto == "udp" && len(h.Send) == 0 {
			t.errf("send", `required (non-empty) for check = "send-expect" on a udp pool`)
		}
	}
	t.finish()
	return h
}

// maxExpect is the most a send-expect check reads before giving up (the
// health package's bound).
const maxExpect = 64 << 10

// validServerName reports whether s can be sent as SNI: a host name
// (validHostname), not an IP address. The health package's own test
// accepts every such name.
func validServerName(s string) bool {
	_, err := netip.ParseAddr(s)
	return err != nil && validHostname(s)
}

func hasSpaceOrControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// statusRanges decodes expect_status: 200, "2xx", "200-299" or an array
// of those.
func (t *table) statusRanges(key string) ([]StatusRange, bool) {
	v, ok := t.get(key)
	if !ok {
		return nil, false
	}
	entries := []item{{path: t.keyPath(key), line: t.keyLine(key), v: v}}
	if a, isArray := v.([]any); isArray {
		if len(a) == 0 {
			t.errf(key, "must list at least one status")
			return nil, false
		}
		entries, _ = t.array(key)
	}
	var out []StatusRange
	ok = true
	for _, e := range entries {
		var r StatusRange
		var err error
		switch x := e.v.(type) {
		case int64:
			if x < 0 || x > 999 {
				err = fmt.Errorf("invalid status %d (want codes 100-599, low-high)", x)
				break
			}
			r, err = checkStatus(StatusRange{int(x), int(x)}, x)
		case string:
			r, err = parseStatus(x)
		default:
			err = fmt.Errorf(`expected a status such as 200, "2xx" or "200-299", got %s`, tomlType(x))
		}
		if err != nil {
			t.d.add(e.path, e.line, "%v", err)
			ok = false
			continue
		}
		out = append(out, r)
	}
	return out, ok
}
