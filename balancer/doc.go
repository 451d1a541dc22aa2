// Package balancer chooses the backend that serves a new client connection.
//
// It holds two kinds of values:
//
//   - A [Backend] is one upstream server together with its run-time state:
//     health (up/down), administrative state ([Enabled], [Draining],
//     [Disabled]), slow-start scale and connection counters. Every method is
//     safe for concurrent use; the state lives in atomics. The server keeps
//     one *Backend per pool and address for the life of the process and
//     hands the same pointer to every [Pool] it builds, so health, admin
//     state and counters survive a config reload.
//   - A [Pool] is an immutable list of [Member] values (a backend, its
//     weight and whether it is a backup) plus a selection algorithm
//     ("round-robin", "least-connections", "ip-hash" or "maglev"). A reload builds a
//     new Pool from the (reused) backends and their new weights and swaps it
//     in; the old Pool keeps working, with the old weights, for whoever
//     still holds it.
//
// Building a pool:
//
//	pool, err := balancer.New(balancer.RoundRobin, []balancer.Member{
//		{Backend: web1, Weight: 3},
//		{Backend: web2, Weight: 1},
//		{Backend: spare, Weight: 1, Backup: true},
//	})
//
// A typical connection handler, with retries on connect failure:
//
//	var tried balancer.Tried // on the stack; no allocation for up to 8 tries
//	for attempt := 0; attempt <= retries; attempt++ {
//		b := pool.Pick(clientAddrPort, &tried)
//		if b == nil {
//			break // nothing eligible and untried is left
//		}
//		tried.Add(b)
//		b.Acquire() // busy from the pick on, for least-connections
//		conn, err := dial(b.Address())
//		if err != nil {
//			b.Release()
//			b.AddFailure()
//			continue
//		}
//		b.Established()
//		serve(conn)
//		b.Release()
//		return
//	}
//
// Health checkers call [Backend.SetHealthy], the admin API calls
// [Backend.SetAdmin], and a slow-start ramp driven by the caller's clock calls
// [Backend.SetWeightScale]. Pick sees every such change at once.
//
// Selection rules. A member is eligible while its backend is healthy and
// its admin state is Enabled, and its weight is above 0. [Pool.Pick]
// chooses among the eligible, untried primaries; only when there is none
// does it choose among the eligible, untried backups. Every algorithm
// honours weights, scaled by the backend's slow-start factor:
//
//   - round-robin is nginx's smooth weighted round-robin: with weights 5,1,1
//     the sequence is a a b a c a a, never five in a row to the first backend.
//   - least-connections picks the lowest Active()/weight. Ties are shared in
//     proportion to weight along a low-discrepancy sequence, so the first
//     backend is not always favoured.
//   - ip-hash is weighted rendezvous (highest random weight) hashing of the
//     client IP and the backend address with a fixed hash: every process
//     picks the same backend for the same client; when a backend leaves, only
//     its own clients move, and when it returns they all come back.
//   - maglev is a weighted Maglev lookup table (maglev.go), built by [New]
//     from the members as configured: a pick is one table lookup (O(1),
//     against ip-hash's O(N)), every process with the same members builds
//     the same table ([Pool.TableDigest]), and a key whose backend is out
//     walks its own fixed fallback order, so processes that see different
//     health states still agree on every key whose backend is up in all.
//     Slow start does not apply to it.
//
// ip-hash and maglev hash the client's IP address, or its address and port
// with [WithHashKey]([HashKeyIPPort]).
//
// What it does not do: no I/O, no clock reads, no goroutines and no logging.
// It does not dial, health-check, time out passive failures or run the
// slow-start clock; it only reads the state that its callers set. Pick and
// the Backend methods do not allocate.
package balancer
