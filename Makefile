# Walrus build, test and benchmark entry points. CI runs .ci/run, which calls
# `make lint test`; nothing here needs more than Go itself (tools are
# installed into ./bin at pinned versions on first use).

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN         := $(CURDIR)/bin
LDFLAGS     := -s -w -X main.version=$(VERSION)
FUZZTIME    ?= 8s
BENCHTIME   ?= 3s
GOLANGCI    := $(BIN)/golangci-lint
GOLANGCI_VERSION := v2.15.0

export CGO_ENABLED ?= 0

.PHONY: all build examples run test test-unit test-integration fuzz bench bench-go lint clean

all: build

## build: static binaries into ./bin
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## examples: the nats.go and native protocol example programs into ./bin/examples
examples:
	$(GO) build -o $(BIN)/examples/ ./examples/...

## run: build and start a single node on the defaults (data in ./data, native protocol on 127.0.0.1:8080)
run: build
	$(BIN)/walrus

## test: unit and race tests, the multi-process scenarios, short fuzz runs (what CI runs)
test: test-unit test-integration fuzz

UNIT_PKGS = $(shell $(GO) list ./... | grep -v /tests)

test-unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

## test-integration: real walrus processes on loopback (without -race: it starves 3 nodes on 2 cores)
test-integration:
	$(GO) test -count=1 -timeout 25m ./tests/...

## fuzz: run every fuzz target for FUZZTIME (default 10s) each
FUZZ_TARGETS := \
	./storage:FuzzDecodeFrame \
	./storage:FuzzRecoverSegment \
	./broker/protocol:FuzzFrameReader \
	./broker/protocol:FuzzParse \
	./bridge:FuzzDecodeRequest \
	./bridge:FuzzDecodeResponse \
	./cluster:FuzzJoinMessage

# Minimising a new input may take the whole run otherwise. The fuzzed
# recovery target fsyncs on every execution, so it runs on tmpfs when there
# is one (crash tests in test-unit run on the real file system).
FUZZ_TMP := $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		TMPDIR=$(FUZZ_TMP) $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 3s $$pkg; \
	done

## bench: the storage benchmark (ceilings, workloads, group-commit curve) and Go benchmarks
bench: build
	$(BIN)/walrus bench storage
	$(MAKE) bench-go

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./storage/

## lint: gofmt, go vet, golangci-lint (pinned, installed into ./bin)
lint: $(GOLANGCI)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI) run ./...

$(GOLANGCI):
	GOBIN=$(BIN) CGO_ENABLED=0 $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)

clean:
	rm -rf $(BIN)
