package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lbctl/lbctl/pkg/server"
)

// printStatus writes the status for a person: the process (version,
// uptime, config file, last reload), then two tables, listeners, then
// backends by pool with when their state last changed and their last
// check. Times are shown relative to now.
func printStatus(out io.Writer, st server.Status, now time.Time) {
	if st.Version != "" || !st.Started.IsZero() {
		fmt.Fprintf(out, "lbctl %s, up %s (since %s), config %s\n",
			orDash(st.Version), age(st.Started, now), stamp(st.Started), orDash(st.ConfigFile))
		switch r := st.LastReload; {
		case r == nil:
			fmt.Fprintln(out, "last reload: none since the start")
		case r.Result == "ok":
			fmt.Fprintf(out, "last reload: ok, %s ago (%s)\n", age(r.Time, now), stamp(r.Time))
		default:
			fmt.Fprintf(out, "last reload: FAILED, %s ago (%s), the previous configuration kept running:\n", age(r.Time, now), stamp(r.Time))
			for _, line := range strings.Split(strings.TrimSpace(r.Error), "\n") {
				fmt.Fprintf(out, "  %s\n", line)
			}
		}
		fmt.Fprintln(out)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "LISTENER\tPROTOCOL\tBIND\tPOOL\tACTIVE")
	for _, l := range st.Listeners {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", l.Name, l.Protocol, l.Bind, poolColumn(l), l.Active)
	}
	if len(st.Listeners) == 0 {
		fmt.Fprintln(w, "(none)")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "POOL\tALGORITHM\tBACKEND\tSOURCE\tHEALTH\tADMIN\tWEIGHT\tBACKUP\tACTIVE\tTOTAL\tFAILURES\tSINCE\tLAST CHECK")
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			backup := "-"
			if b.Backup {
				backup = "yes"
			}
			addr := b.Address
			if b.Removing { // left the pool, draining its connections
				addr += " (removing)"
			}
			weight := strconv.Itoa(b.Weight)
			if b.WeightOverride != nil {
				weight += "*" // overridden at run time
			}
			since := "-" // never changed since lbctl knows it
			if b.LastChange != nil {
				since = age(*b.LastChange, now)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n",
				p.Name, p.Algorithm, addr, b.Source, b.Health, b.Admin, weight, backup, b.Active, b.Total, b.Failures,
				since, lastCheck(b.LastCheck, now))
		}
	}
	w.Flush()
}

// lastCheck describes a backend's last active check on one line:
// "failure 1.0s ago (2ms): dial tcp ...: connection refused".
func lastCheck(c *server.CheckStatus, now time.Time) string {
	if c == nil {
		return "-"
	}
	s := fmt.Sprintf("%s %s ago (%s)", c.Result, age(c.At, now), took(c.DurationSeconds))
	if c.Reason != "" {
		s += ": " + strings.ReplaceAll(c.Reason, "\n", "; ")
	}
	return s
}

// age is how long ago t was, rounded to what a person reads: 850ms,
// 12s, 5m3s, 2h4m, 3d4h.
func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		days := int(d / (24 * time.Hour))
		return fmt.Sprintf("%dd%dh", days, int((d-time.Duration(days)*24*time.Hour)/time.Hour))
	}
}

// took is a check's duration in seconds as a duration string.
func took(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// stamp is t in UTC, to the second.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
