// Package discovery finds a pool's backends outside the config file: in DNS
// (A/AAAA or SRV records), in a JSON file, or under a key prefix in etcd.
//
// A [Source] is one such place. Its Run method refreshes until its context
// ends and after every refresh hands the whole set it found to a callback:
// never a diff, always the complete answer, sorted by address and without
// duplicates. A refresh that fails hands over an error instead, and no set,
// so the caller keeps the last good set it had: a source that is down, slow,
// or answers nonsense never empties a pool. An answer that really is empty
// (a file holding [] or an etcd prefix with no key) is an empty set with a
// nil error, and is the only way a source empties itself.
//
// Typical use, with the composition root owning the goroutine, the merge of
// all sources into a pool, metrics and logging:
//
//	src := discovery.NewDNS(discovery.DNSOptions{
//		Name: "web.internal", Port: 8080, Weight: 1,
//		Resolver: "127.0.0.1:53", Interval: 5 * time.Second,
//	})
//	go src.Run(ctx, func(set []discovery.Entry, err error) {
//		if err != nil {
//			countFailure(src.Name()) // log once per episode, keep the last set
//			return
//		}
//		replaceSource(src.Name(), set)
//	})
//
// The four sources:
//
//   - [NewDNS] asks one DNS server for the A and AAAA records of a name every
//     Interval and gives each address the configured port, weight and backup
//     flag. NXDOMAIN, SERVFAIL, a timeout or a name without addresses is a
//     failure.
//   - [NewSRV] asks for the SRV records of a name and resolves each target
//     to its A and AAAA addresses at the record's port. The SRV weight is the
//     backend's weight (0 counts as 1); the records with the lowest priority
//     value are primaries, all others backups. A target that does not exist
//     (NXDOMAIN, or no address records) is left out; a target whose lookup
//     fails for any other reason (timeout, SERVFAIL) fails the whole refresh,
//     so a flaky server does not drain backends that are still there; if no
//     target has an address the refresh fails too.
//   - [NewFile] reads a JSON array such as
//     [{"address": "10.0.0.5:80", "weight": 2, "backup": false}] (weight
//     0..1000000, default 1; backup default false) and reads it again when it
//     changes: written in place or replaced by a rename, through inotify
//     (fsnotify) on the file's directory and a stat of the file every
//     second, so a change applies within about a second even if an event is
//     lost. A missing, unreadable or malformed file (also a zero-byte one, as
//     seen half-way through a rewrite in place) is a failure; a duplicate
//     address in the file is malformed.
//   - [NewEtcd] takes every key under a prefix as one backend, its value
//     being "IP:port" or a JSON object as in the file, and follows changes
//     with a watch. A malformed value fails the refresh until it is fixed or
//     deleted. Two keys with the same address: the first key in key order
//     wins (agents that register themselves may briefly overlap). An
//     unreachable etcd is a failure per attempt, retried with a back-off of
//     at most a second, so a restarted etcd is followed again within about
//     two seconds.
//
// The file and etcd sources also hand over their unchanged set every
// [ConfirmEvery] while they are healthy (and their error while they are
// not), so a caller's "last success" time says how fresh the set is for every
// kind of source, not how long ago it last changed.
//
// Names and addresses. Every address is an IP and a port, IPv4-mapped IPv6
// addresses unmapped, so an address found here compares equal to the same
// address written in the config. DNS names are asked as fully qualified
// names (no search domains); the Go resolver is used against the one server
// given, and it reads /etc/hosts first as /etc/nsswitch.conf says, like any
// Go program.
//
// What this package does not do: it does not merge sources or decide which
// of two sources owns an address, keep state per backend, health-check,
// log or count anything (the caller does, from the callback); it does not
// validate options beyond what a refresh needs (an option that makes no
// sense fails every refresh with an error that says why). Options are plain
// values; pkg/config validates the TOML and builds them.
package discovery
