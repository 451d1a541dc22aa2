// Package config turns an lbctl TOML file into typed, validated values.
//
// Load (or Parse, for bytes already in memory) reads the whole file, checks
// every key against the schema in the README and SPEC, fills in the
// defaults, renders go-sockaddr templates in bind addresses and CIDR lists,
// and returns a *Config whose durations are time.Duration, whose CIDRs are
// netip.Prefix and whose references (listener -> pool) are known to resolve:
//
//	cfg, err := config.Load("/etc/lbctl/lbctl.toml")
//	var errs config.Errors
//	if errors.As(err, &errs) {
//		for _, e := range errs {
//			fmt.Println(e) // lbctl.toml:42: pools.web.health.interval: invalid duration "2x"
//		}
//	}
//
// An invalid file is never half-loaded: the error lists every problem found,
// each with the file, the line where the key stands and the key path
// (entries of arrays are counted from 0: pools.web.backends[1].weight).
// Unknown keys are errors.
//
// A Config is a value: nothing in it changes after Load returns, and callers
// must not modify it; a reload is a new Load and a new Config. The package
// opens no sockets, starts no goroutines and logs nothing. It does not
// read the admin token file, the state file or a file source, nor contact
// discovery sources. Backend host names are resolved by ResolveBackends
// through a lookup function the caller passes (net.DefaultResolver's, or a
// fake in tests), at validate, start and reload:
//
//	addrs, err := config.ResolveBackends(cfg, func(ctx context.Context, host string) ([]netip.Addr, error) {
//		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
//	})
//	// err is an Errors: lbctl.toml:31: pools.web.backends[2].address: cannot resolve host "db.internal": ...
//	// addrs["db.internal:5432"] == "10.0.0.7:5432"
package config

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/BurntSushi/toml"
)

// Defaults that the file may override. Every one of them is in the SPEC's
// "Defaults in one place" and in examples/lbctl.toml.
const (
	DefaultShutdownTimeout      = 30 * time.Second
	DefaultAdminBind            = "127.0.0.1:9900"
	DefaultProtocol             = "tcp"
	DefaultIdleTimeout          = 10 * time.Minute
	DefaultProxyProtocolTimeout = 5 * time.Second
	DefaultUnrepliedTimeout     = 30 * time.Second
	DefaultAlgorithm            = "round-robin"
	DefaultConnectTimeout       = 3 * time.Second
	DefaultRetries              = 2
	DefaultMaxFails             = 1
	DefaultFailTimeout          = 10 * time.Second
	DefaultWeight               = 1
	DefaultHealthInterval       = 2 * time.Second
	DefaultHealthTimeout        = 1 * time.Second
	DefaultRise                 = 2
	DefaultFall                 = 3
	DefaultHealthPath           = "/"
	DefaultDiscoverInterval     = 5 * time.Second // dns and srv sources: refresh period
	DefaultResolverPort         = 53              // a discover resolver written as a bare IP
	MaxDiscoverWeight           = 1_000_000       // the largest weight of a dns source
	MaxWeight                   = 1_000_000       // the largest weight of a static backend
)

// Config is one loaded configuration file.
type Config struct {
	File            string        // the path it was loaded from
	Digest          [32]byte      // SHA-256 of the file's bytes as parsed
	ShutdownTimeout time.Duration // drain time on SIGTERM; 0 closes at once
	Log             Log
	Admin           *Admin           // nil when the [admin] table is absent (admin API disabled)
	Listeners       []*Listener      // sorted by Name
	Pools           map[string]*Pool // by name; every Listener.Pool is a key

	// StateFile keeps admin states, weight overrides and API-added backends
	// across restarts; "" = off. A relative path in the file is taken from
	// the config file's directory (and stored joined to it).
	StateFile string

	// ControlSocket is the unix socket serving the admin API to local
	// clients without token ("" = none): control_socket, else
	// $RUNTIME_DIRECTORY/lbctl.sock under systemd (DefaultControlSocket).
	ControlSocket string

	// BGP announces service addresses to routers (bgp.go); nil when the
	// [bgp] table is absent.
	BGP *BGP

	// backendLines holds, per pool, the line of each backend's address key
	// (ResolveBackends names it in its errors).
	backendLines map[string][]int
	// tokenFileLine is the line of [admin] token_file (CheckTokenFile
	// names it in its errors).
	tokenFileLine int
}

// Log is the [log] table.
type Log struct {
	Level  string // "debug" | "info" | "warn" | "error"; default "info"
	Format string // "json" | "console"; default "json"
	Access bool   // one line per finished connection / UDP session; default true
}

// Admin is the [admin] table.
type Admin struct {
	Bind      string         // rendered host:port; default 127.0.0.1:9900
	Allow     []netip.Prefix // clients allowed; default 127.0.0.0/8 and ::1/128
	TokenFile string         // "" = no token needed
	// Hosts are the names a request's Host header may carry besides IP
	// literals and localhost; others get 421 (DNS rebinding). nil = none.
	Hosts []string
}

// Listener is one [listeners.NAME] table.
type Listener struct {
	Name     string
	Protocol string // "tcp" | "udp"
	Bind     string // rendered from BindTemplate, a valid IP:port
	// BindTemplate is bind as written (it equals Bind unless it uses a
	// go-sockaddr template); a reload renders it again.
	BindTemplate   string
	Pool           string        // key of Config.Pools; "" only with Routes
	MaxConnections int           // tcp: connections, udp: sessions; 0 = no limit
	IdleTimeout    time.Duration // > 0
	// HalfCloseTimeout (tcp): once one side has finished sending, the
	// connection is closed when this passes without the other side
	// finishing too; 0 = only IdleTimeout applies.
	HalfCloseTimeout time.Duration
	// UnrepliedTimeout (udp): a session whose backend has never replied
	// ends after this, whatever IdleTimeout says. > 0.
	UnrepliedTimeout time.Duration

	Allow, Deny []netip.Prefix // empty Allow = everyone; Deny wins; see Match

	MaxConnectionsPerClient  int     // 0 = no limit
	ConnectionRatePerClient  float64 // new connections per second; 0 = no limit
	ConnectionBurstPerClient int     // 0 = same as the rate

	AcceptProxyProtocol  bool           // tcp only
	TrustedProxies       []netip.Prefix // non-empty when AcceptProxyProtocol
	ProxyProtocolTimeout time.Duration  // > 0

	Responses int // udp only: replies after which a session ends; 0 = until idle

	// Routes (tcp only) send TLS connections to a pool by the server name
	// of their ClientHello, first match wins (routes.go); Pool, when set,
	// takes what matches no route. Nil without routes: the listener
	// proxies every connection to Pool without reading anything.
	Routes []Route
	// TLSInspectTimeout bounds the wait for the whole ClientHello: > 0
	// with Routes (default DefaultTLSInspectTimeout), else unused (0
	// unless written).
	TLSInspectTimeout time.Duration
}

// Pool is one [pools.NAME] table.
type Pool struct {
	Name      string
	Algorithm string // "round-robin" | "least-connections" | "ip-hash" | "maglev"
	// TableSize is a maglev pool's lookup table size, a prime (default
	// 65537); 0 for the other algorithms.
	TableSize int
	// HashKey is what an ip-hash or maglev pool hashes: "ip" (default) or
	// "ip-port"; "" for the other algorithms.
	HashKey string
	// Protocol is the protocol of the listeners that use the pool: "udp"
	// when only udp listeners use it, else "tcp" (also for unused pools).
	Protocol       string
	ConnectTimeout time.Duration // > 0
	Retries        int
	ProxyProtocol  string // "none" | "v1" | "v2"
	MaxFails       int    // 0 = passive checks off
	FailTimeout    time.Duration
	SlowStart      time.Duration // 0 = off
	// DrainTimeout: a backend removed from the pool (by a reload, a source
	// or the API) takes no new connections; its established ones may run
	// this long, then are reset. 0 = until they end.
	DrainTimeout time.Duration
	// Backends are the static [[pools.NAME.backends]] entries, addresses
	// unique, in file order. A pool has at least one backend or at least
	// one Discover entry.
	Backends []Backend
	Discover []Discover // [[pools.NAME.discover]] entries, in file order; no two alike
	Health   Health
}

// Backend is one [[pools.NAME.backends]] entry.
type Backend struct {
	Address string // exactly as configured: "10.0.0.1:80", "[::1]:80", "db.internal:5432"
	Weight  int    // >= 0; 0 takes no new connections
	Backup  bool
}

// Discover is one [[pools.NAME.discover]] entry: a source of backends that
// the server watches at run time. Only the fields of its Type are set:
//
//	dns:  Name, Port, Weight, Backup, Resolver, Interval
//	srv:  Name, Resolver, Interval (the records carry port, weight, priority)
//	file: Path
//	etcd: Endpoints, Prefix
type Discover struct {
	Type string // "dns" | "srv" | "file" | "etcd"
	// Name is the host name (dns) or the SRV record name (srv, such as
	// "_web._tcp.internal"), as written.
	Name   string
	Port   int  // dns: 1-65535, the port of every address found
	Weight int  // dns: 0..MaxDiscoverWeight, default 1
	Backup bool // dns
	// Resolver is the DNS server to ask, "IP:port" (a bare IP in the file
	// means port 53); "" = the first nameserver of /etc/resolv.conf.
	Resolver string
	Interval time.Duration // dns, srv: refresh period, > 0, default 5s
	// Path is the JSON file (file). A relative path in the config file is
	// taken from the config file's directory and stored joined to it.
	Path      string
	Endpoints []string // etcd: "http://host:port" or "https://host:port" URLs, at least one
	Prefix    string   // etcd: non-empty key prefix; every key under it is one backend
	// Line is the line of the entry's type key (of its table header when
	// type is absent), for messages about the source at run time.
	Line int
}

// Source names the source as the status JSON and the metrics' source
// label do: "dns:NAME", "srv:NAME", "file:PATH" or "etcd:PREFIX". No two
// Discover entries of one pool have the same Source.
func (d Discover) Source() string {
	switch d.Type {
	case "file":
		return "file:" + d.Path
	case "etcd":
		return "etcd:" + d.Prefix
	}
	return d.Type + ":" + d.Name
}

// Health is the [pools.NAME.health] table.
type Health struct {
	Check        string // "tcp" | "http" | "tls" | "https" | "send-expect" | "none"
	Interval     time.Duration
	Timeout      time.Duration
	Rise, Fall   int
	Port         int           // 0 = the backend's own port
	Path         string        // http, https: request path, default "/"
	Host         string        // http, https: Host header; "" = the backend address (https: the server name)
	ExpectStatus []StatusRange // http, https: default 200
	Send, Expect []byte        // send-expect: bytes sent, bytes expected at the start of the reply
	ServerName   string        // tls, https: the SNI sent; "" = derived by the server (see the README)
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// StatusOK reports whether code is one of h.ExpectStatus.
func (h Health) StatusOK(code int) bool {
	for _, r := range h.ExpectStatus {
		if code >= r.Lo && code <= r.Hi {
			return true
		}
	}
	return false
}

// Match reports whether a is inside one of prefixes. IPv4-mapped IPv6
// addresses (::ffff:10.0.0.1, as a dual-stack socket reports IPv4 peers)
// match IPv4 prefixes, and zones are ignored.
func Match(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Load reads and parses the file at path. The error is an Errors when the
// file is invalid, or another error when it can't be read.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses the TOML in data; file names it in errors and becomes
// Config.File. The error, if any, is an Errors.
func Parse(file string, data []byte) (*Config, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{{File: file, Line: pe.Position.Line, Msg: "invalid TOML: " + pe.Message}}
		}
		return nil, Errors{{File: file, Msg: "invalid TOML: " + err.Error()}}
	}
	d := &decoder{file: file, lines: indexLines(data)}
	cfg := d.config(raw)
	cfg.File = file
	cfg.Digest = sha256.Sum256(data)
	if len(d.errs) > 0 {
		sortErrors(d.errs)
		return nil, d.errs
	}
	return cfg, nil
}
