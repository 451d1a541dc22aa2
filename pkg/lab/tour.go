package lab

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Sizes of the tour's steps.
const (
	UDPFlows    = 60  // UDP flows, one client port each
	StarveFlows = 300 // TCP flows while an instance is withdrawn
)

// TourResult is what Tour measured, for the test to assert.
type TourResult struct {
	Digests map[string]map[string]string // instance -> pool -> table_digest
	Flows   *FlowsResult
	UDP     []Flow
	Starve  *StarveResult
	Stop    *StopResult
}

// Tour runs the lab's story and writes it to w as it goes: the router's
// route, the instances' table digests, where 1,000 clients' flows went,
// UDP flows, lb3 losing its backends, and SIGTERM to lb1. make lab prints
// it; the test asserts its result.
func (l *Lab) Tour(w io.Writer) (*TourResult, error) {
	r := &TourResult{}
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n== "+format+"\n", args...) }

	step("The router: bird2, a BGP session with each instance, one ECMP route to %s", VIPPrefix)
	out, err := l.Birdc("show", "route", "for", VIP.String())
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "$ birdc show route for %s\n%s", VIP, indent(birdRoutes(out)))
	out, err = l.router.ip("route", "show", VIPPrefix.String())
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "$ ip route show %s   (router's kernel; fib_multipath_hash_policy = 1: addresses and ports)\n%s", VIPPrefix, indent(out))

	if r.Digests, err = l.Digests(); err != nil {
		return nil, err
	}
	step("Table digests (status JSON table_digest): the same tables on every instance")
	fmt.Fprintf(w, "  %-9s %-18s %s\n", "instance", "web (tcp, ip)", "dns (udp, ip-port)")
	for _, in := range l.Instances {
		fmt.Fprintf(w, "  %-9s %-18s %s\n", in.Name, r.Digests[in.Name]["web"], r.Digests[in.Name]["dns"])
	}

	if r.Flows, err = l.Flows(Clients); err != nil {
		return nil, err
	}
	step("%d clients (10.78.0.1 on), one TCP connection each to %s:%d through the router", Clients, VIP, TCPPort)
	table(w, r.Flows.ViaRouter, l.Instances, l.Backends)
	step("The same %d clients, each also connecting to every instance's own address (no ECMP)", Clients)
	dis := r.Flows.Disagreements()
	fmt.Fprintf(w, "  %d of %d clients reached the same backend through the router and through each of lb1, lb2, lb3\n",
		Clients-len(dis), Clients)
	fmt.Fprintf(w, "  %-12s %-13s %-4s %-4s %s\n", "client", "router", "lb1", "lb2", "lb3")
	show := []int{0, 1, 2, 3, 4}
	if len(dis) > 0 {
		show = dis[:min(len(dis), 5)]
	}
	for _, i := range show {
		f := r.Flows.ViaRouter[i]
		fmt.Fprintf(w, "  %-12s %-13s", f.Client, f.Instance+" -> "+f.Backend)
		for _, d := range r.Flows.Direct[i] {
			fmt.Fprintf(w, " %-4s", orErr(d))
		}
		fmt.Fprintln(w)
	}

	if err := l.OpenUDP(UDPFlows); err != nil {
		return nil, err
	}
	r.UDP = l.ExchangeUDP()
	step("UDP to %s:%d, hash_key = \"ip-port\": %d flows, one client address and port each", VIP, UDPPort, UDPFlows)
	table(w, r.UDP, l.Instances, l.Backends)

	lb3 := l.Instances[2]
	if r.Starve, err = l.Starve(lb3, StarveFlows); err != nil {
		return nil, err
	}
	s := r.Starve
	step("%s loses its backends (a prohibit route to 10.77.9.0/24 in its namespace: its health checks fail)", lb3.Name)
	fmt.Fprintf(w, "  the router's route lost %s %v later (health check, then BGP withdraw)\n", lb3.Name, s.Withdrawn.Round(time.Millisecond))
	fmt.Fprintf(w, "  %d new TCP connections through the router:\n", len(s.Flows))
	table(w, s.Flows, l.Instances, l.Backends)
	fmt.Fprintf(w, "  UDP: %s\n", CompareUDP(s.UDPBefore, s.UDPAfter))
	fmt.Fprintf(w, "  backends reachable again: the router's route had %s back %v later\n", lb3.Name, s.Returned.Round(time.Millisecond))

	lb1 := l.Instances[0]
	step("SIGTERM to %s (withdraw_delay = %v) while clients keep opening connections through the router", lb1.Name, l.opts.WithdrawDelay)
	if r.Stop, err = l.Stop(lb1); err != nil {
		return nil, err
	}
	st := r.Stop
	exit := "0"
	if st.ExitErr != nil {
		exit = st.ExitErr.Error()
	}
	seen := fmt.Sprintf("it still had it at %+.3fs", st.RouteSeen.Seconds())
	if st.RouteSeen == 0 {
		seen = "the first look after the SIGTERM"
	}
	events := []event{
		{0, "SIGTERM to " + lb1.Name},
		{st.LastServed, "the last connection through the router served by " + lb1.Name + " ends"},
		{st.RouteGone, fmt.Sprintf("the router's route no longer has %s (%s)", lb1.Name, seen)},
		{st.FirstRefused, lb1.Name + "'s listener refuses a connection (closed)"},
		{st.Exited, lb1.Name + " has exited, status " + exit},
	}
	events = append(events, logSince(lb1, st.Begin)...)
	slices.SortStableFunc(events, func(a, b event) int {
		return cmp.Compare(a.at, b.at)
	})
	for _, e := range events {
		fmt.Fprintf(w, "  %+8.3fs  %s\n", e.at.Seconds(), e.what)
	}
	fmt.Fprintf(w, "  %d new TCP connections through the router, from 1 s before the SIGTERM to after the exit:\n", len(st.Flows))
	table(w, st.Flows, l.Instances, l.Backends)
	inflight := 0
	for _, f := range st.Flows {
		if st.InFlight(f) {
			inflight++
		}
	}
	fmt.Fprintf(w, "  failed while not in flight at the route change: %d; in flight at the change: %d, of which failed %d\n",
		len(st.NewFailures()), inflight, len(Failed(st.Flows))-len(st.NewFailures()))
	fmt.Fprintf(w, "  UDP: %s\n", CompareUDP(st.UDPBefore, st.UDPAfter))
	return r, nil
}

func (m Moves) String() string {
	return fmt.Sprintf("%d of %d flows moved to another instance, %d of them kept their backend; %d changed backend, %d failed",
		m.Moved, m.Flows, m.MovedKept, m.Changed, m.Failed)
}

// table writes the flows by instance and backend, and the failures.
func table(w io.Writer, flows []Flow, ins []*Instance, bes []*Backend) {
	count := map[[2]string]int{}
	for _, f := range flows {
		count[[2]string{f.Instance, f.Backend}]++
	}
	fmt.Fprintf(w, "  %-9s %6s", "instance", "flows")
	for _, b := range bes {
		fmt.Fprintf(w, " %5s", b.Name)
	}
	fmt.Fprintln(w)
	for _, in := range ins {
		total := 0
		for _, b := range bes {
			total += count[[2]string{in.Name, b.Name}]
		}
		fmt.Fprintf(w, "  %-9s %6d", in.Name, total)
		for _, b := range bes {
			fmt.Fprintf(w, " %5d", count[[2]string{in.Name, b.Name}])
		}
		fmt.Fprintln(w)
	}
	failed := Failed(flows)
	fmt.Fprintf(w, "  %-9s %6d", "failed", len(failed))
	if len(failed) > 0 {
		fmt.Fprintf(w, "  (first: %s -> %s: %v)", failed[0].Client, failed[0].Via, failed[0].Err)
	}
	fmt.Fprintln(w)
}

func orErr(f Flow) string {
	if f.Err != nil {
		return "ERR"
	}
	return f.Backend
}

// birdRoutes keeps birdc's route lines (its banner and attributes dropped).
func birdRoutes(out string) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		t := strings.TrimSpace(line)
		if strings.Contains(t, "via") || strings.Contains(t, "unicast") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n") + "\n"
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	lines = slices.DeleteFunc(lines, func(s string) bool { return strings.TrimSpace(s) == "" })
	return "  " + strings.Join(lines, "\n  ") + "\n"
}

// event is a line of the SIGTERM timeline.
type event struct {
	at   time.Duration
	what string
}

// logSince is what in logged from begin on (its JSON lines' ts and msg,
// with the fields that say what), as timeline events.
func logSince(in *Instance, begin time.Time) []event {
	var out []event
	for _, line := range strings.Split(in.Proc.Output(), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		ts, _ := e["ts"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || at.Before(begin.Add(-time.Second)) {
			continue
		}
		what := fmt.Sprintf("%s log: %v", in.Name, e["msg"])
		for _, k := range []string{"prefix", "withdraw_delay", "connections", "reason"} {
			if v, ok := e[k]; ok {
				what += fmt.Sprintf(" %s=%v", k, v)
			}
		}
		d := at.Sub(begin)
		if d < 0 && d > -time.Millisecond {
			d = 0 // lbctl logs milliseconds: truncated, not earlier
		}
		out = append(out, event{d, what})
	}
	return out
}
