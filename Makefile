# lbctl — see README.md.
GO       ?= go
PREFIX   ?= /usr/local
DESTDIR  ?=
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Packages whose tests run under -race (everything).
PKGS     ?= ./...

.PHONY: all build test vet fmt lint demo clean

all: build

## build: write bin/lbctl, stamped with version and commit
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/lbctl ./cmd/lbctl

## test: go vet, then every test with the race detector, then a short run of each fuzz target
test: vet
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	$(MAKE) --no-print-directory fuzz-short

## test-stress: the suite of make test (without fuzzing) STRESS_ROUNDS times
## (default 3), each round beside two CPU-burning processes, as on a loaded CI
## machine; fails naming the first round that failed. PKGS narrows it
STRESS_ROUNDS ?= 3
# Burners also end by themselves after STRESS_BURN: a make killed with
# SIGKILL never runs the trap that stops them.
STRESS_BURN   ?= 30m
.PHONY: test-stress
test-stress:
	@burners=""; \
	stop() { [ -z "$$burners" ] || { kill $$burners 2>/dev/null; wait $$burners 2>/dev/null; }; burners=""; }; \
	trap stop EXIT; trap 'exit 130' INT TERM HUP; \
	round=1; while [ $$round -le $(STRESS_ROUNDS) ]; do \
		for i in 1 2; do timeout $(STRESS_BURN) sh -c 'while :; do :; done' & burners="$$burners $$!"; done; \
		echo "test-stress: round $$round of $(STRESS_ROUNDS), CPU burners (pids$$burners) beside the suite"; \
		$(GO) test -race -count=1 -timeout 15m $(PKGS) || { echo "test-stress: round $$round of $(STRESS_ROUNDS) failed"; exit 1; }; \
		stop; round=$$((round + 1)); \
	done; \
	echo "test-stress: $(STRESS_ROUNDS) rounds passed"

## fuzz: run each fuzz target for FUZZTIME (default 3m); a failing input is
## written to the package's testdata/fuzz/ and stays there as a seed
## fuzz-short: the same for 10s each (part of make test)
FUZZ_TARGETS ?= pkg/config:FuzzParse pkg/proxyheader:FuzzParse pkg/proxyheader:FuzzAppend tlshello:FuzzRead tlshello:FuzzParse
FUZZTIME     ?= 3m
.PHONY: fuzz fuzz-short
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $${t#*:} in ./$${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) ./$${t%%:*}; \
	done
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=10s

## soak: DURATION (default 10m) of mixed load on a real lbctl, with backends
## killed and configs reloaded; prints failures and resource use (not in CI)
DURATION ?= 10m
.PHONY: soak
soak: build
	$(GO) build -o bin/lbsoak ./cmd/lbsoak
	bin/lbsoak -lbctl bin/lbctl -duration $(DURATION)

## soak-upgrade: issue 16's upgrade load on a real lbctl: 2,000 checksummed
## TCP streams, 500 UDP sessions and 500 new connections a second while
## lbctl is upgraded UPGRADES times in a row (default 10); prints a report
## (docs/upgrade-soak.md) and exits 1 if anything was lost (not in CI)
UPGRADES ?= 10
.PHONY: soak-upgrade
soak-upgrade: build
	$(GO) build -o bin/lbsoak ./cmd/lbsoak
	bin/lbsoak -lbctl bin/lbctl -upgrades $(UPGRADES)

vet:
	$(GO) vet $(PKGS)

## fmt: gofmt the tree
fmt:
	gofmt -w $$(git ls-files '*.go')

## lint: fail when a file is not gofmt-clean or vet complains
lint: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

## demo: three local backends and lbctl in front of them, with traffic spread across them
demo: build
	$(GO) build -o bin/lbdemo ./cmd/lbdemo
	./bin/lbdemo --lbctl ./bin/lbctl --config examples/demo.toml

## lab: three lbctl instances behind a bird2 router with ECMP, announcing one
## address over BGP, in network namespaces: where 1,000 clients' flows go, an
## instance losing its backends, SIGTERM to one (root; bird2 and iproute2)
.PHONY: lab
lab: build
	@[ "$$(id -u)" = 0 ] || { echo "make lab creates network namespaces: run it as root (sudo make lab)"; exit 1; }
	@for p in ip bird birdc; do command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || \
		{ echo "make lab needs $$p: apt-get install bird2 iproute2"; exit 1; }; done
	$(GO) build -o bin/lblab ./cmd/lblab
	./bin/lblab --lbctl ./bin/lbctl

## install: binary, systemd units, man pages, shell completions and (unless
## present) /etc/lbctl/lbctl.toml, under $(DESTDIR); LBCTL_BIN=FILE installs
## that binary instead of building one
BINDIR      ?= $(PREFIX)/bin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
SYSCONFDIR  ?= /etc
LBCTL_BIN   ?=
# The binary installed; it also writes the man pages and completions.
LBCTL_RUN   := $(or $(LBCTL_BIN),bin/lbctl)
.PHONY: install install-docs uninstall docs-gen
install: $(if $(LBCTL_BIN),,build) install-docs
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/lbctl
	install -m 0755 $(or $(LBCTL_BIN),bin/lbctl) $(DESTDIR)$(BINDIR)/lbctl
	sed -e 's|/usr/local/bin/lbctl|$(BINDIR)/lbctl|g' -e 's|/etc/lbctl/|$(SYSCONFDIR)/lbctl/|g' \
		examples/lbctl.service > $(DESTDIR)$(UNITDIR)/lbctl.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/lbctl.service
	install -m 0644 examples/lbctl.socket $(DESTDIR)$(UNITDIR)/lbctl.socket
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/lbctl/lbctl.toml ]; then \
		echo "kept $(DESTDIR)$(SYSCONFDIR)/lbctl/lbctl.toml (it exists)"; \
	else \
		install -m 0644 examples/lbctl.default.toml $(DESTDIR)$(SYSCONFDIR)/lbctl/lbctl.toml && \
		echo "installed $(DESTDIR)$(SYSCONFDIR)/lbctl/lbctl.toml"; \
	fi
	@echo "next: sudo systemctl daemon-reload && sudo systemctl enable --now lbctl"

## install-docs: only the man pages (lbctl.1, one per command) and the bash,
## zsh and fish completions, written by the binary itself (part of install)
install-docs: $(if $(LBCTL_BIN),,build)
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	rm -f $(DESTDIR)$(MANDIR)/man1/lbctl.1 $(DESTDIR)$(MANDIR)/man1/lbctl-*.1
	$(LBCTL_RUN) gen man $(DESTDIR)$(MANDIR)/man1
	$(LBCTL_RUN) completion bash > $(DESTDIR)$(BASHCOMPDIR)/lbctl
	$(LBCTL_RUN) completion zsh > $(DESTDIR)$(ZSHCOMPDIR)/_lbctl
	$(LBCTL_RUN) completion fish > $(DESTDIR)$(FISHCOMPDIR)/lbctl.fish
	chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/lbctl $(DESTDIR)$(ZSHCOMPDIR)/_lbctl $(DESTDIR)$(FISHCOMPDIR)/lbctl.fish

## docs-gen: the man pages and completions of install-docs, into build/docs/usr
docs-gen:
	$(MAKE) --no-print-directory install-docs DESTDIR=$(CURDIR)/build/docs PREFIX=/usr

## uninstall: remove what install put in place, except the configuration
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/lbctl $(DESTDIR)$(UNITDIR)/lbctl.service $(DESTDIR)$(UNITDIR)/lbctl.socket
	rm -f $(DESTDIR)$(MANDIR)/man1/lbctl.1 $(DESTDIR)$(MANDIR)/man1/lbctl-*.1
	rm -f $(DESTDIR)$(BASHCOMPDIR)/lbctl $(DESTDIR)$(ZSHCOMPDIR)/_lbctl $(DESTDIR)$(FISHCOMPDIR)/lbctl.fish
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/lbctl/ (your configuration): remove it by hand if you wish"

clean:
	rm -rf bin build

-include bench/bench.mk
