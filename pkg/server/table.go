package server

// table.go: a pool's hashing settings for the balancer, and the pools'
// table digests in metrics. A maglev pool's lookup table is built
// by balancer.New in buildGen, that is in the goroutine that applies a
// change of the pool's configured set (a reload, a discovery source's new
// set, an API add or remove, a weight override), before the new generation
// is swapped into the listeners: a pick never waits for a build, and keeps
// using the previous table until the swap. Health and admin state do not
// rebuild it (the balancer skips backends that are out along each key's
// fallback order), so every instance with the same configured pool holds
// the same table whatever health it sees.

import (
	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
)

// balancerOptions are the options of pc's algorithm for balancer.New.
func balancerOptions(pc *config.Pool) []balancer.Option {
	var opts []balancer.Option
	if pc.TableSize != 0 {
		opts = append(opts, balancer.WithTableSize(pc.TableSize))
	}
	if pc.HashKey != "" {
		opts = append(opts, balancer.WithHashKey(pc.HashKey))
	}
	return opts
}

// publishTable shows the table digest of p, the generation of a pool now
// in service after old (nil for a new pool), in lbctl_pool_table_info.
func (s *Server) publishTable(old, p *pool) {
	if d := p.bal.TableDigest(); old == nil || old.bal.TableDigest() != d {
		s.m.SetPoolTable(p.name, d)
	}
}
