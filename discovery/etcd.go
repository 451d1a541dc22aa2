package discovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
)

const (
	// DefaultEtcdTimeout bounds each request to etcd when the options give
	// no DialTimeout.
	DefaultEtcdTimeout = 2 * time.Second
	// etcdProbe is how often a watched etcd is asked whether it still
	// answers: a watch alone waits silently for a dead server to return.
	etcdProbe = time.Second
	// etcdRetryFirst and etcdRetryMost bound the wait between attempts while
	// etcd is unreachable; the most is a second so that a restarted etcd is
	// followed again within about two.
	etcdRetryFirst = 100 * time.Millisecond
	etcdRetryMost  = time.Second
)

// EtcdOptions configure an etcd source.
type EtcdOptions struct {
	Endpoints   []string      // "http://127.0.0.1:2379", ...
	Prefix      string        // every key under it is one backend
	DialTimeout time.Duration // bounds each connection attempt and request; 0 = DefaultEtcdTimeout
}

// NewEtcd returns a source that reads every key under opts.Prefix from
// etcd and follows changes with a watch.
func NewEtcd(opts EtcdOptions) Source {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultEtcdTimeout
	}
	return &etcdSource{opts: opts}
}

type etcdSource struct{ opts EtcdOptions }

func (s *etcdSource) Name() string { return "etcd:" + s.opts.Prefix }

// errResync ends a watch that must be started again from a fresh read
// (compaction, cancellation by the server); it is not a failure to report.
var errResync = errors.New("etcd watch ended")

func (s *etcdSource) Run(ctx context.Context, update func([]Entry, error)) {
	retry := backoff{first: etcdRetryFirst, most: etcdRetryMost}
	if s.opts.Prefix == "" {
		// A prefix of "" would take every key in the cluster as a backend.
		for {
			update(nil, errors.New("etcd source: prefix is required"))
			if !sleep(ctx, ConfirmEvery) {
				return
			}
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.opts.Endpoints,
		DialTimeout: s.opts.DialTimeout,
		Logger:      zap.NewNop(), // failures reach the caller through update
		DialOptions: []grpc.DialOption{
			// gRPC's own reconnect back-off grows to two minutes; capped
			// here, the connection to a restarted etcd is back within a
			// second.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: grpcbackoff.Config{
					BaseDelay: etcdRetryFirst, Multiplier: 1.6, Jitter: 0.2, MaxDelay: etcdRetryMost,
				},
				MinConnectTimeout: s.opts.DialTimeout,
			}),
		},
	})
	if err != nil {
		// Only a bad configuration fails here (the connection is made
		// lazily): report it for as long as the source runs.
		for {
			update(nil, fmt.Errorf("etcd %s: %w", strings.Join(s.opts.Endpoints, ","), err))
			if !sleep(ctx, ConfirmEvery) {
				return
			}
		}
	}
	defer cli.Close()

	for {
		err := s.follow(ctx, cli, update, &retry)
		if ctx.Err() != nil {
			return
		}
		if !errors.Is(err, errResync) {
			update(nil, fmt.Errorf("etcd %s: %w", strings.Join(s.opts.Endpoints, ","), err))
		}
		if !sleep(ctx, retry.wait()) {
			return
		}
	}
}

// follow reads the prefix, reports it, and then applies the watch's events
// until the watch ends or etcd stops answering. It returns why it stopped.
func (s *etcdSource) follow(ctx context.Context, cli *clientv3.Client, update func([]Entry, error), retry *backoff) error {
	rctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	resp, err := cli.Get(rctx, s.opts.Prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return s.getError(err)
	}
	retry.reset()
	kvs := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	lastReport := time.Now()
	report := func() {
		lastReport = time.Now()
		set, err := parseEtcd(kvs)
		if err != nil {
			err = fmt.Errorf("etcd prefix %s: %w", s.opts.Prefix, err)
		}
		update(set, err)
	}
	report()

	// WithRequireLeader: a member cut off from its cluster ends the watch
	// instead of serving stale events.
	wctx, stop := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer stop()
	events := cli.Watch(wctx, s.opts.Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	probe := time.NewTicker(etcdProbe)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-events:
			if !ok {
				return errResync
			}
			// Apply this response and any already waiting, then report
			// once: a burst of puts is one refresh, not hundreds.
			changed := false
			for more := true; more; {
				if err := wr.Err(); err != nil {
					return fmt.Errorf("%w: %v", errResync, err)
				}
				for _, ev := range wr.Events {
					changed = true
					switch ev.Type {
					case clientv3.EventTypePut:
						kvs[string(ev.Kv.Key)] = ev.Kv.Value
					case clientv3.EventTypeDelete:
						delete(kvs, string(ev.Kv.Key))
					}
				}
				select {
				case wr, more = <-events:
				default:
					more = false
				}
			}
			if changed { // else a progress notification
				report()
			}
		case <-probe.C:
			pctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
			_, err := cli.Get(pctx, s.opts.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			cancel()
			if err != nil {
				return s.getError(err)
			}
			if time.Since(lastReport) >= ConfirmEvery {
				report()
			}
		}
	}
}

// getError says what a failed read means: a read that timed out is an etcd
// that does not answer (the client waits for a connection until then).
func (s *etcdSource) getError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("get %s: no answer within %v: %w", s.opts.Prefix, s.opts.DialTimeout, err)
	}
	return fmt.Errorf("get %s: %w", s.opts.Prefix, err)
}

// parseEtcd turns the values under a prefix into a set. Each value is
// "IP:port" or a JSON object as in the file source; a malformed one fails
// the whole set. Two keys with one address: the first key wins.
func parseEtcd(kvs map[string][]byte) ([]Entry, error) {
	keys := make([]string, 0, len(kvs))
	for k := range kvs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	set := make([]Entry, 0, len(keys))
	seen := make(map[netip.AddrPort]bool, len(keys))
	for _, k := range keys {
		en, err := parseEtcdValue(kvs[k])
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", k, err)
		}
		if seen[en.Addr] {
			continue
		}
		seen[en.Addr] = true
		set = append(set, en)
	}
	sortEntries(set)
	return set, nil
}

func parseEtcdValue(v []byte) (Entry, error) {
	v = bytes.TrimSpace(v)
	if len(v) > 0 && v[0] == '{' {
		var e entryJSON
		if err := decodeStrict(v, &e); err != nil {
			return Entry{}, err
		}
		return e.entry()
	}
	ap, err := parseAddrPort(string(v))
	if err != nil {
		return Entry{}, err
	}
	return Entry{Addr: ap, Weight: 1}, nil
}
