#!/bin/bash
# profile.sh: profile one proxy under one lbbench load, the way the
# "Issue 14: where the per-message cost is" section of docs/benchmarks.md was
# made. Bounded: the load runs 12 s, perf 4-6 s of it; everything it starts
# is stopped by PID at the end.
#
#   bench/profile.sh MODE TARGET MEASURE [PIN]
#
#   MODE     cpu      perf record -g (cpu-clock) of the proxy; report with
#                     perf report -i OUT/perf.data --children --sort symbol
#            wakeups  perf record -e sched:sched_wakeup -g (who the proxy
#                     wakes, by call chain), then perf stat of task-clock,
#                     context switches, wake-ups, syscalls, nanosleep, futex
#            eagain   perf stat of read/recvfrom calls and of those that
#                     returned EAGAIN, and of epoll waits that returned nothing
#            idle     the machine's idle share over 5 s (/proc/stat), then
#                     perf record -a of context switches, wake-ups and timers
#                     for 2 s, summed by idle period (bench/idle-periods.py)
#            sched    perf sched record -a for 3 s, then perf sched timehist:
#                     how long the proxy's threads waited for a CPU after
#                     their wake-up (sched delay) and who ran meanwhile
#            reads    bpftrace of bench/read-delay.bt for 3 s: per process,
#                     how long data waited in a socket before it was read
#                     (needs bpftrace)
#   TARGET   lbctl | haproxy | nginx        (haproxy has no UDP)
#   MEASURE  rr32 | rr1 | udp | short
#   PIN      none (default) | split: load generator and backends on CPU 0,
#            the proxy alone on CPU 1 with one thread
#
# Environment: LBCTL (default bin/lbctl; build it without -s -w so that perf
# can name Go functions: go build -o /tmp/lbctl ./cmd/lbctl), LBBENCH
# (default bin/lbbench), OUT (default /tmp/lbbench-profile/MODE-TARGET-MEASURE-PIN),
# LBCTL_GODEBUG (a GODEBUG value for lbctl only, e.g. schedtrace=3600000 to
# keep the runtime's sysmon out of its deep sleep), PORT (default 17001; TCP
# on PORT, UDP on PORT+1). Needs perf (linux-perf) and root or
# perf_event_paranoid <= 1.
set -eu
if [ $# -lt 3 ]; then sed -n '2,30p' "$0"; exit 2; fi
MODE=$1 T=$2 M=$3 PIN=${4:-none}
LBCTL=$(realpath "${LBCTL:-bin/lbctl}") LBBENCH=$(realpath "${LBBENCH:-bin/lbbench}")
PORT=${PORT:-17001}
D=${OUT:-/tmp/lbbench-profile/$MODE-$T-$M-$PIN}
case $MODE in cpu|wakeups|eagain|idle|sched|reads) ;; *) echo "profile.sh: MODE $MODE: want cpu, wakeups, eagain, idle, sched or reads" >&2; exit 2;; esac
case $M in
rr32) L="-n 32 rr"; A=127.0.0.1:$PORT ;;
rr1) L="-n 1 rr"; A=127.0.0.1:$PORT ;;
short) L="short"; A=127.0.0.1:$PORT ;;
udp) L="udp"; A=127.0.0.1:$((PORT + 1)) ;;
*) echo "profile.sh: MEASURE $M: want rr32, rr1, udp or short" >&2; exit 2 ;;
esac
LOADPIN=() PROXYPIN=() THREADS=$(nproc)
if [ "$PIN" = split ]; then LOADPIN=(taskset -c 0); PROXYPIN=(taskset -c 1); THREADS=1; fi
rm -rf "$D"; mkdir -p "$D"
PIDS_STARTED=()
cleanup() {
	for p in "${PIDS_STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	exec 7>&- 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

# Backends: lbbench backends runs until its stdin closes (fd 7).
mkfifo "$D/backends.in"
"${LOADPIN[@]}" "$LBBENCH" backends -n 2 <"$D/backends.in" >"$D/addrs" &
PIDS_STARTED+=($!)
exec 7>"$D/backends.in"
for _ in $(seq 100); do [ -s "$D/addrs" ] && break; sleep 0.1; done
addr() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][int(sys.argv[3])])" "$D/addrs" "$1" "$2"; }
E1=$(addr echo 0) E2=$(addr echo 1) U1=$(addr udp 0) U2=$(addr udp 1)

case $T in
lbctl)
	cat >"$D/lbctl.toml" <<EOT
shutdown_timeout = "1s"
[admin]
bind = "127.0.0.1:$((PORT + 2))"
[log]
level = "warn"
access = false
[listeners.tcp]
protocol = "tcp"
bind = "127.0.0.1:$PORT"
pool = "echo"
[listeners.udp]
protocol = "udp"
bind = "127.0.0.1:$((PORT + 1))"
pool = "udpecho"
[pools.echo]
algorithm = "round-robin"
  [[pools.echo.backends]]
  address = "$E1"
  [[pools.echo.backends]]
  address = "$E2"
  [pools.echo.health]
  check = "none"
[pools.udpecho]
algorithm = "round-robin"
  [[pools.udpecho.backends]]
  address = "$U1"
  [[pools.udpecho.backends]]
  address = "$U2"
  [pools.udpecho.health]
  check = "none"
EOT
	ENV=()
	[ -n "${LBCTL_GODEBUG:-}" ] && ENV=(env "GODEBUG=$LBCTL_GODEBUG")
	"${PROXYPIN[@]}" "${ENV[@]}" "$LBCTL" serve --config "$D/lbctl.toml" >"$D/proxy.log" 2>&1 &
	;;
haproxy)
	[ "$M" = udp ] && { echo "profile.sh: HAProxy has no UDP" >&2; exit 2; }
	cat >"$D/haproxy.cfg" <<EOT
global
    nbthread $THREADS
defaults
    mode tcp
    option splice-auto
    timeout connect 3s
    timeout client 10m
    timeout server 10m
frontend tcp
    bind 127.0.0.1:$PORT
    default_backend echo
backend echo
    balance roundrobin
    server e1 $E1
    server e2 $E2
EOT
	"${PROXYPIN[@]}" haproxy -f "$D/haproxy.cfg" -db >"$D/proxy.log" 2>&1 &
	;;
nginx)
	cat >"$D/nginx.conf" <<EOT
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $THREADS;
pid $D/nginx.pid;
error_log $D/nginx-error.log error;
events { worker_connections 4000; multi_accept on; }
stream {
  proxy_half_close on;
  upstream echo { server $E1; server $E2; }
  upstream udpecho { server $U1; server $U2; }
  server { listen 127.0.0.1:$PORT reuseport; proxy_pass echo; }
  server { listen 127.0.0.1:$((PORT + 1)) udp reuseport; proxy_pass udpecho; proxy_timeout 10s; }
}
EOT
	"${PROXYPIN[@]}" nginx -p "$D" -e "$D/nginx-error.log" -c "$D/nginx.conf" -g 'daemon off;' >"$D/proxy.log" 2>&1 &
	;;
*) echo "profile.sh: TARGET $T: want lbctl, haproxy or nginx" >&2; exit 2 ;;
esac
PP=$!
PIDS_STARTED+=("$PP")
sleep 1.5
kill -0 "$PP" 2>/dev/null || { echo "profile.sh: $T exited:" >&2; cat "$D/proxy.log" >&2; exit 1; }
PIDS=$PP
for c in $(pgrep -P "$PP" || true); do PIDS=$PIDS,$c; done

# shellcheck disable=SC2086 # L is a word list on purpose
"${LOADPIN[@]}" "$LBBENCH" load -time 12s $L "$A" >"$D/load.json" 2>&1 &
LP=$!
PIDS_STARTED+=("$LP")
sleep 2
case $MODE in
cpu)
	perf record -F 1999 -g -p "$PIDS" -o "$D/perf.data" -- sleep 6 >"$D/perf.log" 2>&1 ;;
wakeups)
	perf record -e sched:sched_wakeup -g -p "$PIDS" -o "$D/perf.data" -- sleep 4 >"$D/perf.log" 2>&1
	perf stat -x, -o "$D/stat.csv" -p "$PIDS" -e task-clock,context-switches,sched:sched_wakeup,raw_syscalls:sys_enter,syscalls:sys_enter_nanosleep,syscalls:sys_enter_futex -- sleep 4 ;;
idle)
	head -1 /proc/stat >"$D/stat0"; sleep 5; head -1 /proc/stat >"$D/stat1"
	python3 - "$D/stat0" "$D/stat1" <<'EOP' | tee "$D/idle.txt"
import sys
a = list(map(int, open(sys.argv[1]).read().split()[1:]))
b = list(map(int, open(sys.argv[2]).read().split()[1:]))
d = [y - x for x, y in zip(a, b)]
t = sum(d)
print("machine over 5 s: user %.1f %%, system %.1f %%, softirq %.1f %%, idle %.1f %%" %
      (100 * d[0] / t, 100 * d[2] / t, 100 * d[6] / t, 100 * (d[3] + d[4]) / t))
EOP
	perf record -a -e sched:sched_switch,sched:sched_wakeup,timer:hrtimer_expire_entry -o "$D/sched.data" -- sleep 2 >"$D/perf.log" 2>&1
	perf script -i "$D/sched.data" >"$D/sched.txt" 2>/dev/null
	python3 "$(dirname "$0")/idle-periods.py" "$D/sched.txt" | tee -a "$D/idle.txt" ;;
sched)
	if [ "$T" = lbctl ]; then curl -s "127.0.0.1:$((PORT + 2))/metrics" >"$D/metrics0" || true; fi
	perf sched record -a -o "$D/sched.data" -- sleep 3 >"$D/perf.log" 2>&1
	if [ "$T" = lbctl ]; then curl -s "127.0.0.1:$((PORT + 2))/metrics" >"$D/metrics1" || true; fi
	perf sched timehist -i "$D/sched.data" -w >"$D/timehist.txt" 2>/dev/null
	perf sched latency -i "$D/sched.data" --sort max >"$D/latency.txt" 2>/dev/null
	if [ "$T" = lbctl ]; then
		# Go's own scheduler: how long lbctl's goroutines (the loops) waited
		# for a thread once runnable, over the same 3 s (sampled by the runtime).
		python3 - "$D/metrics0" "$D/metrics1" <<'EOP' | tee "$D/go-sched.txt" || true
import re, sys
def hist(path):
    h = {}
    for line in open(path):
        m = re.match(r'go_sched_latencies_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            h[float(m.group(1))] = float(m.group(2))
    return h
a, b = hist(sys.argv[1]), hist(sys.argv[2])
if float("inf") not in a or float("inf") not in b:
    sys.exit("go_sched_latencies_seconds: not in lbctl's /metrics (admin not reached?)")
tot = b[float("inf")] - a[float("inf")]
print("go_sched_latencies_seconds over the record: %d samples" % tot)
for le in sorted(b):
    print("  <= %-10g %6.2f %%" % (le, 100 * (b[le] - a[le]) / tot if tot else 0))
EOP
	fi
	grep -E "lbctl|haproxy|nginx|Task" "$D/latency.txt" | head -20 ;;
reads)
	bpftrace "$(dirname "$0")/read-delay.bt" >"$D/read-delay.txt" 2>"$D/bpftrace.log"
	grep -E '^@(reads|over_1ms)' "$D/read-delay.txt" ;;
eagain)
	perf stat -x, -o "$D/stat.csv" -p "$PIDS" \
		-e syscalls:sys_exit_read --filter 'ret == -11' -e syscalls:sys_exit_read \
		-e syscalls:sys_exit_recvfrom --filter 'ret == -11' -e syscalls:sys_exit_recvfrom \
		-e syscalls:sys_exit_epoll_pwait --filter 'ret == 0' -e syscalls:sys_exit_epoll_pwait \
		-e syscalls:sys_exit_epoll_wait --filter 'ret == 0' -e syscalls:sys_exit_epoll_wait \
		-- sleep 5 ;;
esac
wait "$LP" || true
echo "== $MODE $T $M pin=$PIN: results in $D (the load's rate is over its 12 s; perf covered 4-6 s of it)"
cat "$D/load.json"
[ -f "$D/stat.csv" ] && grep -v '^#' "$D/stat.csv" | grep -v '^$' | cut -d, -f1,3
exit 0
