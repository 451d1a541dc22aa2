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

## test: go vet, then every test with the race detector
test: vet
	$(GO) test -race -count=1 -timeout 10m $(PKGS)

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

clean:
	rm -rf bin

-include bench/bench.mk
