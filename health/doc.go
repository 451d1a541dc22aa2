// Package health runs active health checks against backends and decides,
// with rise/fall hysteresis, whether each one is up or down.
//
// The package has two halves that can be used separately:
//
//   - A [Prober] runs one check against one address and returns nil for a
//     success or an error that says what went wrong ("HTTP 500", "expect not
//     seen after 12 bytes: EOF", "dial tcp 10.0.0.1:80: connect: connection
//     refused"). [NewProber] builds one from a [Spec]: a plain TCP connect,
//     an HTTP/1.1 GET whose status code is judged, a TLS handshake (with the
//     server name Spec.ServerName, certificate not verified), the same GET
//     over TLS, or a send-expect exchange over TCP or UDP. Every check is bounded by Spec.Timeout (a context
//     deadline plus connection deadlines) and reads a bounded number of bytes.
//
//   - A [Checker] owns one goroutine per target. It runs the target's check
//     every Spec.Interval, counts consecutive results and reports through two
//     callbacks: one for every result (for a counter such as
//     lbctl_health_checks_total) and one for every transition between up and
//     down (to log once and flip the backend in the balancer).
//
// Typical use, with the composition root owning the wiring:
//
//	c := health.NewChecker(
//		func(target string, o health.Outcome, err error, took time.Duration) { countCheck(target, o) },
//		func(ev health.Event) { log(ev); setBackendUp(ev.Target, ev.Up) },
//	)
//	defer c.Stop()
//	spec := health.Spec{Kind: health.KindHTTP, Path: "/healthz",
//		Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
//	if err := c.Set("web/10.0.0.11:80", "10.0.0.11:80", spec, true); err != nil {
//		return err // invalid spec
//	}
//
// State rules. A new target is "unknown" and counts as whatever the caller
// passed as initialUp (lbctl passes true: a backend is up until a check says
// otherwise). Its first check runs at once, spread over a few milliseconds so
// that hundreds of targets do not dial in the same instant, and its result
// alone decides: a failure marks the target down immediately, a success marks
// it up. After that a target goes down after Fall consecutive failures and
// comes back after Rise consecutive successes, so a backend that fails every
// other check never flaps when Fall and Rise are at least 2. Later checks run
// every Interval minus a small random amount (at most 10%), which keeps
// targets from drifting back into lock-step.
//
// Local failures. A check that fails because lbctl itself is out of
// descriptors, buffers or local ports (the errors localerr.Is names, the
// same list the proxies use) is no verdict on the backend: it is reported
// as [NoVerdict] and changes neither the state nor the counters, so a
// process that runs out of descriptors does not mark its healthy backends
// down and then turn clients away until Rise checks pass again.
//
// Reloads. Calling [Checker.Set] again for a target with the same address
// keeps its state and its rhythm and makes the next check use the new spec;
// a different address starts the target afresh. [Checker.Remove] stops one
// target and [Checker.Stop] stops them all; both wait until the goroutines
// have returned, so no callback runs for a target once its removal returned.
//
// What this package does not do: it does not know about pools, the balancer,
// metrics or logging (callers get callbacks and decide), it never sends a
// PROXY protocol header, it does not resolve "none" checks into anything (a
// target whose Kind is [KindNone] is simply not checked), and it keeps no
// history beyond the consecutive-result counters.
package health
