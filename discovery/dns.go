package discovery

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultInterval is the refresh period of the dns and srv sources when
	// the options give none.
	DefaultInterval = 5 * time.Second
	// maxQueryTime bounds one refresh (all its queries) when the interval is
	// longer: a server that does not answer is a failure after this long.
	maxQueryTime = 5 * time.Second
	// srvLookups is how many SRV targets are resolved at the same time.
	srvLookups = 16
	// resolvConf is where the default resolver comes from.
	resolvConf = "/etc/resolv.conf"
)

// DNSOptions configure a dns source.
type DNSOptions struct {
	Name     string        // the host name whose A and AAAA records are the backends
	Port     uint16        // the port of every address found; required
	Weight   int           // the weight of every address found, used as given (the config's default is 1)
	Backup   bool          // every address found is a backup
	Resolver string        // "IP:port" (or "IP", port 53) of the DNS server; "" = first nameserver in /etc/resolv.conf
	Interval time.Duration // refresh period; 0 = DefaultInterval
}

// SRVOptions configure a srv source.
type SRVOptions struct {
	Name     string        // the SRV name, such as "_web._tcp.internal"
	Resolver string        // as in DNSOptions
	Interval time.Duration // refresh period; 0 = DefaultInterval
}

// NewDNS returns a source that resolves opts.Name to its A and AAAA records
// every opts.Interval. Every failure (NXDOMAIN, SERVFAIL, timeout, no
// address records, a bad option) is reported as an error.
func NewDNS(opts DNSOptions) Source {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	return &dnsSource{opts: opts}
}

// NewSRV returns a source that reads the SRV records of opts.Name every
// opts.Interval and resolves their targets (see the package comment for
// priorities, weights and targets that do not resolve).
func NewSRV(opts SRVOptions) Source {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	return &srvSource{opts: opts}
}

type dnsSource struct{ opts DNSOptions }

func (s *dnsSource) Name() string { return "dns:" + s.opts.Name }

func (s *dnsSource) Run(ctx context.Context, update func([]Entry, error)) {
	every(ctx, s.opts.Interval, update, s.refresh)
}

func (s *dnsSource) refresh(ctx context.Context) ([]Entry, error) {
	if s.opts.Port == 0 {
		return nil, errors.New("dns source: port is required")
	}
	if s.opts.Weight < 0 || s.opts.Weight > MaxWeight {
		return nil, fmt.Errorf("dns source: weight %d out of range 0..%d", s.opts.Weight, MaxWeight)
	}
	r, server, err := resolver(s.opts.Resolver)
	if err != nil {
		return nil, err
	}
	addrs, err := r.LookupNetIP(ctx, "ip", fqdn(s.opts.Name))
	if err != nil {
		return nil, askedOf(err, server)
	}
	set := make([]Entry, 0, len(addrs))
	for _, a := range addrs {
		set = append(set, Entry{Addr: netip.AddrPortFrom(a.Unmap(), s.opts.Port), Weight: s.opts.Weight, Backup: s.opts.Backup})
	}
	return dedupSorted(set), nil
}

type srvSource struct{ opts SRVOptions }

func (s *srvSource) Name() string { return "srv:" + s.opts.Name }

func (s *srvSource) Run(ctx context.Context, update func([]Entry, error)) {
	every(ctx, s.opts.Interval, update, s.refresh)
}

func (s *srvSource) refresh(ctx context.Context) ([]Entry, error) {
	r, server, err := resolver(s.opts.Resolver)
	if err != nil {
		return nil, err
	}
	_, recs, err := r.LookupSRV(ctx, "", "", fqdn(s.opts.Name))
	if err != nil {
		return nil, askedOf(err, server)
	}
	// "." as the only target means "no such service here" (RFC 2782).
	recs = slices.DeleteFunc(recs, func(rec *net.SRV) bool { return rec.Target == "." || rec.Target == "" })
	if len(recs) == 0 {
		return nil, fmt.Errorf("lookup %s: no SRV record with a target", fqdn(s.opts.Name))
	}
	// Lowest priority first; within it the heavier record first, so that
	// when two records lead to one address the primary and heavier one is
	// kept, whatever order the server sent them in.
	slices.SortFunc(recs, func(a, b *net.SRV) int {
		if a.Priority != b.Priority {
			return int(a.Priority) - int(b.Priority)
		}
		if a.Weight != b.Weight {
			return int(b.Weight) - int(a.Weight)
		}
		if c := strings.Compare(a.Target, b.Target); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})

	var targets []string
	for _, rec := range recs {
		if !slices.Contains(targets, rec.Target) {
			targets = append(targets, rec.Target)
		}
	}
	addrs, err := lookupAll(ctx, r, server, targets)
	if err != nil {
		return nil, err
	}

	primary := recs[0].Priority
	set := make([]Entry, 0, len(recs))
	seen := make(map[netip.AddrPort]bool, len(recs))
	for _, rec := range recs {
		for _, a := range addrs[rec.Target] {
			ap := netip.AddrPortFrom(a.Unmap(), rec.Port)
			if ap.Port() == 0 || seen[ap] {
				continue
			}
			seen[ap] = true
			set = append(set, Entry{Addr: ap, Weight: max(int(rec.Weight), 1), Backup: rec.Priority != primary})
		}
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("lookup %s: no SRV target has an address", fqdn(s.opts.Name))
	}
	sortEntries(set)
	return set, nil
}

// lookupAll resolves every target, srvLookups at a time. A target that does
// not exist or has no address records maps to nothing; any other failure
// fails the whole lookup (and stops the lookups still running).
func lookupAll(ctx context.Context, r *net.Resolver, server string, targets []string) (map[string][]netip.Addr, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		out      = make(map[string][]netip.Addr, len(targets))
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, srvLookups)
	)
	for _, target := range targets {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			addrs, err := r.LookupNetIP(ctx, "ip", target)
			if dnsErr, ok := errors.AsType[*net.DNSError](err); ok && dnsErr.IsNotFound {
				err = nil // no such host: an answer, not a failure
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				out[target] = addrs
			case firstErr == nil:
				firstErr = fmt.Errorf("SRV target %s: %w", target, askedOf(err, server))
				cancel()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// every runs refresh at once and then every interval (measured from the
// start of the previous refresh) until ctx ends, each refresh bounded by
// min(interval, maxQueryTime), and reports each result through update.
func every(ctx context.Context, interval time.Duration, update func([]Entry, error),
	refresh func(context.Context) ([]Entry, error)) {
	for {
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, min(interval, maxQueryTime))
		set, err := refresh(rctx)
		cancel()
		if ctx.Err() != nil {
			return // cut short: not a result
		}
		if err != nil {
			set = nil
		}
		update(set, err)
		if !sleep(ctx, time.Until(start.Add(interval))) {
			return
		}
	}
}

// resolver returns a Go resolver that sends every query to server ("IP:port"
// or "IP"), or to the first nameserver of /etc/resolv.conf when server is
// empty, and the address it asks. StrictErrors: an A answer with a failed
// AAAA query is a failure, not a half set.
func resolver(server string) (*net.Resolver, string, error) {
	addr, err := resolverAddr(server)
	if err != nil {
		return nil, "", err
	}
	to := addr.String()
	return &net.Resolver{
		PreferGo:     true,
		StrictErrors: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, to)
		},
	}, to, nil
}

// askedOf names the server really asked in a lookup error: the Go resolver
// names the resolv.conf server its Dial was called for.
func askedOf(err error, server string) error {
	if dnsErr, ok := err.(*net.DNSError); ok {
		named := *dnsErr
		named.Server = server
		return &named
	}
	return err
}

func resolverAddr(server string) (netip.AddrPort, error) {
	if server == "" {
		return firstNameserver(resolvConf)
	}
	if ap, err := netip.ParseAddrPort(server); err == nil && ap.Port() != 0 {
		return ap, nil
	}
	if a, err := netip.ParseAddr(server); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("resolver %q: want IP:port", server)
}

// firstNameserver reads the first "nameserver" line of a resolv.conf file;
// with none, it answers 127.0.0.1:53 as the Go and C resolvers do.
func firstNameserver(path string) (netip.AddrPort, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netip.MustParseAddrPort("127.0.0.1:53"), nil
		}
		return netip.AddrPort{}, fmt.Errorf("default resolver: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				return netip.AddrPortFrom(a, 53), nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return netip.AddrPort{}, fmt.Errorf("default resolver: read %s: %w", path, err)
	}
	return netip.MustParseAddrPort("127.0.0.1:53"), nil
}

// fqdn makes name absolute, so that no search domain is tried.
func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// dedupSorted sorts set and drops later entries with an address already seen.
func dedupSorted(set []Entry) []Entry {
	sortEntries(set)
	return slices.CompactFunc(set, func(a, b Entry) bool { return a.Addr == b.Addr })
}
