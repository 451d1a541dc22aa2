# bench.mk: `make bench`, included from the top-level Makefile.
#
# Compares lbctl with a direct connection, HAProxy and nginx on this machine
# (see docs/benchmarks.md). Not part of `make test`; the load generator's own
# unit tests are (go test ./cmd/lbbench/...).
#
#   make bench                                  # full run, 7 to 9 minutes on 2 cores
#                                               # (BENCH_PIN=both: twice that)
#   BENCH_TIME=1s BENCH_ROUNDS=1 make bench     # quick look
#   BENCH_TARGETS=direct,lbctl,haproxy make bench
#   BENCH_MEASURES=short,sni make bench         # only some rows
#   BENCH_PIN=split make bench                  # load generator + backends on one CPU, the proxy alone on another
#   BENCH_PIN=both make bench                   # unpinned, then pinned: both tables
#   BENCH_COUNTERS=off make bench               # no per-request counter steps (perf stat, /proc)
#
# Results: bench/results/<timestamp>[-pin-split]/{table.md,results.json,chart.svg,configs/};
# the latest tables (one per BENCH_PIN variant) and the first variant's chart
# are copied to docs/bench-table.md and docs/bench-chart.svg.

BENCH_GO      ?= go
BENCH_OUT     ?= bench/results
BENCH_PKGS    := haproxy nginx libnginx-mod-stream
# perf counts the syscalls and wake-ups per request (linux-perf); without
# it the per-request table has the /proc context switches only.
BENCH_PERF    := linux-perf
BENCH_SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: bench bench-deps bench-build

bench: bench-deps bench-build
	bin/lbbench run -lbctl bin/lbctl -out $(BENCH_OUT) -docs docs

# Installs HAProxy and nginx with its stream module from Debian when missing.
# Only the binaries are used: lbbench starts its own instances on free
# loopback ports with generated configs.
bench-deps:
	@if ! command -v haproxy >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1 || \
	   [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then \
		echo "bench: installing $(BENCH_PKGS)"; \
		$(BENCH_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(BENCH_PKGS); \
	fi
	@if [ "$${BENCH_COUNTERS:-on}" != off ] && ! command -v perf >/dev/null 2>&1; then \
		echo "bench: installing $(BENCH_PERF)"; \
		$(BENCH_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(BENCH_PERF) || \
			echo "bench: WARNING: no perf; per-request counters from /proc only"; \
	fi

# lbctl failing to build does not stop the run: the table then says
# "lbctl not run" and the other columns are still measured.
bench-build:
	@mkdir -p bin
	$(BENCH_GO) build -o bin/lbbench ./cmd/lbbench
	@$(MAKE) --no-print-directory build || { echo "bench: WARNING: lbctl does not build; benchmarking the others only"; rm -f bin/lbctl; }
