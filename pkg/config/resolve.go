package config

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"
)

// Lookup returns the IP addresses of host: net.DefaultResolver's
// LookupNetIP with network "ip" in production, a fake in tests.
type Lookup func(ctx context.Context, host string) ([]netip.Addr, error)

// ResolveTimeout bounds each host name lookup of ResolveBackends.
const ResolveTimeout = 5 * time.Second

// ResolveBackends resolves the address of every static backend of cfg
// (the [[pools.NAME.backends]] entries; discover sources are not
// contacted). It returns a map from each Backend.Address as written to
// "IP:port": an IP address is taken as it is, a host name is looked up once
// (each lookup bounded by ResolveTimeout) and its first IPv4 address wins
// over IPv6 ones, so the choice does not depend on the resolver's order.
//
// Every backend whose host does not resolve is reported, with the file, the
// line of its address key and its key path, in an Errors:
//
//	lbctl.toml:31: pools.web.backends[2].address: cannot resolve host "db.internal": lookup db.internal: no such host
//
// On error the map is nil. cfg must come from Load or Parse.
func ResolveBackends(cfg *Config, lookup Lookup) (map[string]string, error) {
	out := map[string]string{}
	type result struct {
		addr netip.Addr
		err  error
	}
	hosts := map[string]result{} // each host is looked up once
	var errs Errors

	names := make([]string, 0, len(cfg.Pools))
	for name := range cfg.Pools {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		lines := cfg.backendLines[name]
		for i, b := range cfg.Pools[name].Backends {
			if _, done := out[b.Address]; done {
				continue
			}
			if ap, err := netip.ParseAddrPort(b.Address); err == nil {
				out[b.Address] = ap.String()
				continue
			}
			host, port, err := net.SplitHostPort(b.Address)
			if err != nil { // not from Parse: Parse checks every address
				err = fmt.Errorf("invalid address %q: want host:port", b.Address)
			} else {
				r, ok := hosts[host]
				if !ok {
					r.addr, r.err = lookupOne(lookup, host)
					hosts[host] = r
				}
				if r.err == nil {
					out[b.Address] = net.JoinHostPort(r.addr.String(), port)
					continue
				}
				err = r.err
			}
			line := 0
			if i < len(lines) {
				line = lines[i]
			}
			errs = append(errs, &Error{
				File: cfg.File, Line: line,
				Key: joinKey(indexKey(joinKey(joinKey("pools", name), "backends"), i), "address"),
				Msg: err.Error(),
			})
		}
	}
	if len(errs) > 0 {
		sortErrors(errs)
		return nil, errs
	}
	return out, nil
}

// lookupOne looks host up and picks one address, IPv4 first.
func lookupOne(lookup Lookup, host string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ResolveTimeout)
	defer cancel()
	ips, err := lookup(ctx, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cannot resolve host %q: %v", host, err)
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("cannot resolve host %q: no address", host)
	}
	best := ips[0].Unmap()
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			best = ip.Unmap()
			break
		}
	}
	return best, nil
}
