package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
)

// This file decodes [[pools.NAME.discover]] entries: which keys each source
// type takes, their defaults, and the checks on their values. The sources
// themselves run in the server; nothing here contacts them.

// discoverTypes are the values of type, in the order messages list them.
var discoverTypes = []string{"dns", "srv", "file", "etcd"}

// discoverKeys maps every type-specific key to the types it is valid for.
var discoverKeys = map[string][]string{
	"name":      {"dns", "srv"},
	"port":      {"dns"},
	"weight":    {"dns"},
	"backup":    {"dns"},
	"resolver":  {"dns", "srv"},
	"interval":  {"dns", "srv"},
	"path":      {"file"},
	"endpoints": {"etcd"},
	"prefix":    {"etcd"},
}

// discoverKeyOrder is discoverKeys' keys in a fixed order for messages.
var discoverKeyOrder = []string{"name", "port", "weight", "backup", "resolver", "interval", "path", "endpoints", "prefix"}

// discoverSeen is the first entry of a pool with a given identity.
type discoverSeen struct {
	path string // key path of the entry
	line int    // line of its identifying key
}

// discovers decodes a pool's discover entries.
func (d *decoder) discovers(t *table) []Discover {
	entries, _ := t.tables("discover")
	var out []Discover
	seen := map[string]discoverSeen{}
	for _, et := range entries {
		ds, idKey, id := d.discover(et)
		if id != "" {
			if first, dup := seen[id]; dup {
				et.errf(idKey, "duplicate source %q (first at %s, line %d)", ds.Source(), first.path, first.line)
			} else {
				seen[id] = discoverSeen{path: et.path, line: et.keyLine(idKey)}
			}
		}
		out = append(out, ds)
	}
	return out
}

// discover decodes one entry. id identifies the source for the duplicate
// check ("" when the entry is too broken to tell); idKey is the key that
// carries it.
func (d *decoder) discover(t *table) (ds Discover, idKey, id string) {
	ds.Line = t.keyLine("type")
	typ, typeOK := t.oneOf("type", discoverTypes...)
	if !typeOK && !t.has("type") {
		t.errf("type", "required: the kind of source (%s)", orList(discoverTypes))
	}
	ds.Type = typ
	if typ == "dns" {
		ds.Weight = DefaultWeight
	}
	if typ == "dns" || typ == "srv" {
		ds.Interval = DefaultDiscoverInterval
	}

	// Every key is decoded whatever the type, so that its value is checked
	// and it is not reported as unknown; a key of another type is reported
	// below once the type is known.
	nameOK := false
	if s, ok := t.str("name"); ok {
		ds.Name = s
		if err := checkDiscoverName(s); err != nil {
			t.errf("name", "%v", err)
		} else {
			nameOK = true
		}
	}
	if v, ok := t.integer("port", 1); ok {
		if v > 65535 {
			t.errf("port", "must be at most 65535, got %d", v)
		} else {
			ds.Port = v
		}
	}
	if v, ok := t.integer("weight", 0); ok {
		if v > MaxDiscoverWeight {
			t.errf("weight", "must be at most %d, got %d", MaxDiscoverWeight, v)
		} else {
			ds.Weight = v
		}
	}
	if v, ok := t.boolean("backup"); ok {
		ds.Backup = v
	}
	if s, ok := t.str("resolver"); ok {
		if r, err := parseResolver(s); err != nil {
			t.errf("resolver", "%v", err)
		} else {
			ds.Resolver = r
		}
	}
	if v, ok := t.duration("interval", true); ok {
		ds.Interval = v
	}
	pathOK := false
	if s, ok := t.str("path"); ok {
		if strings.TrimSpace(s) == "" {
			t.errf("path", "must not be empty")
		} else {
			ds.Path, pathOK = d.relPath(s), true
		}
	}
	if items, ok := t.array("endpoints"); ok {
		if len(items) == 0 {
			t.errf("endpoints", `must list at least one etcd URL, such as "http://127.0.0.1:2379"`)
		}
		for _, it := range items {
			s, isString := it.v.(string)
			if !isString {
				t.d.add(it.path, it.line, "expected a URL string, got %s", tomlType(it.v))
				continue
			}
			e, err := checkEndpoint(s)
			if err != nil {
				t.d.add(it.path, it.line, "%v", err)
				continue
			}
			ds.Endpoints = append(ds.Endpoints, e)
		}
	}
	prefixOK := false
	if s, ok := t.str("prefix"); ok {
		if s == "" {
			t.errf("prefix", "must not be empty (it would take every key of the etcd cluster)")
		} else {
			ds.Prefix, prefixOK = s, true
		}
	}

	if typeOK {
		for _, k := range discoverKeyOrder {
			if !t.has(k) || contains(discoverKeys[k], typ) {
				continue
			}
			types := discoverKeys[k]
			quoted := make([]string, len(types))
			for i, ty := range types {
				quoted[i] = fmt.Sprintf("%q", ty)
			}
			msg := "only valid with type = " + orList(quoted)
			if typ == "srv" && (k == "port" || k == "weight" || k == "backup") {
				msg += ": SRV records carry the port, weight and priority of each target"
			}
			t.errf(k, "%s", msg)
		}
		switch typ {
		case "dns":
			if !t.has("name") {
				t.errf("name", `required with type = "dns": the host name whose A and AAAA records are the backends`)
			}
			if !t.has("port") {
				t.errf("port", `required with type = "dns": the port of every address found`)
			}
		case "srv":
			if !t.has("name") {
				t.errf("name", `required with type = "srv": the SRV record name, such as "_web._tcp.internal"`)
			}
		case "file":
			if !t.has("path") {
				t.errf("path", `required with type = "file": the JSON file that lists the backends`)
			}
		case "etcd":
			if !t.has("endpoints") {
				t.errf("endpoints", `required with type = "etcd": the etcd URLs, such as ["http://127.0.0.1:2379"]`)
			}
			if !t.has("prefix") {
				t.errf("prefix", `required with type = "etcd": the key prefix whose keys are the backends`)
			}
		}
		switch {
		case (typ == "dns" || typ == "srv") && nameOK:
			idKey, id = "name", typ+":"+strings.ToLower(strings.TrimSuffix(ds.Name, "."))
		case typ == "file" && pathOK:
			idKey, id = "path", "file:"+ds.Path
		case typ == "etcd" && prefixOK:
			idKey, id = "prefix", "etcd:"+ds.Prefix
		}
	}
	t.finish()
	return ds, idKey, id
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// relPath takes a path written in the config file: a relative one is
// relative to the config file's directory.
func (d *decoder) relPath(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(filepath.Dir(d.file), p)
}

// checkDiscoverName checks the name of a dns or srv source: a host name,
// without port, not an IP address.
func checkDiscoverName(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return fmt.Errorf("%q is an IP address, not a name to resolve (list it under backends instead)", s)
	}
	if _, _, err := net.SplitHostPort(s); err == nil {
		return fmt.Errorf("invalid name %q: a host name without port (the port goes in port)", s)
	}
	if !validHostname(s) {
		return fmt.Errorf("invalid name %q: want a host name such as \"web.internal\"", s)
	}
	return nil
}

// parseResolver parses a DNS server address, "IP:port" or "IP" (port 53),
// and returns it as "IP:port" (IPv6 in brackets).
func parseResolver(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, DefaultResolverPort).String(), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf(`invalid resolver %q: want IP or IP:port, such as "127.0.0.1:53" or "[::1]:53"`, s)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("invalid resolver %q: host must be an IP address", s)
	}
	p, err := parsePort(port)
	if err != nil {
		return "", fmt.Errorf("invalid resolver %q: %v", s, err)
	}
	return netip.AddrPortFrom(ip, p).String(), nil
}

// checkEndpoint checks an etcd endpoint: http:// or https://, a host (IP
// or name) and a port, nothing else. It returns it as scheme://host:port.
func checkEndpoint(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("invalid endpoint %q: want http://host:port or https://host:port", s)
	}
	if u.User != nil || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("invalid endpoint %q: want only scheme, host and port (%s://%s)", s, u.Scheme, u.Host)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return "", fmt.Errorf("invalid endpoint %q: the port is required (%s://%s:2379)", s, u.Scheme, u.Host)
	}
	if _, err := parsePort(port); err != nil {
		return "", fmt.Errorf("invalid endpoint %q: %v", s, err)
	}
	if _, err := netip.ParseAddr(host); err != nil && !validHostname(host) {
		return "", fmt.Errorf("invalid endpoint %q: host is neither an IP address nor a host name", s)
	}
	return u.Scheme + "://" + u.Host, nil
}
