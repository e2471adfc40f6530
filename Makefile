# Walrus build, test and benchmark entry points. CI runs .ci/run, which calls
# `make lint test`; nothing here needs more than Go itself (tools are
# installed into ./bin at pinned versions on first use).

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN         := $(CURDIR)/bin
LDFLAGS     := -s -w -X main.version=$(VERSION)
FUZZTIME    ?=
BENCHTIME   ?= 3s
GOLANGCI    := $(BIN)/golangci-lint
GOLANGCI_VERSION := v2.15.0
# The nats CLI runs the commands of docs/nats.md and the README in tests/.
NATSCLI_VERSION := v0.5.1
NATSCLI     := $(BIN)/natscli-$(NATSCLI_VERSION)/nats
# helm checks and renders the chart in helm/walrus (make helm-lint, tests/helm).
HELM_VERSION := v3.22.0
HELM        := $(BIN)/helm-$(HELM_VERSION)/helm
HELM_KUBE_VERSION := 1.30.0

export CGO_ENABLED ?= 0

.PHONY: all build examples nats-cli run test test-unit test-integration fuzz bench bench-go lint clean
.PHONY: image test-docker

all: build

## build: static binaries into ./bin
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## image: the container image walrus:dev and walrus:$(VERSION), FROM scratch with the binaries of
## build (cmd/walrus/Dockerfile). The build context is a temporary directory holding only the two
## binaries and the empty /tmp and /data, so nothing else is sent to the daemon and nothing is pulled.
image: build
	@set -e; ctx=$$(mktemp -d); trap 'rm -rf "$$ctx"' EXIT; \
	mkdir -p "$$ctx/rootfs/tmp" "$$ctx/rootfs/data"; chmod 1777 "$$ctx/rootfs/tmp"; chmod 0755 "$$ctx/rootfs/data"; \
	cp $(BIN)/walrus $(BIN)/walrus-cli "$$ctx/"; \
	echo "docker build walrus:dev walrus:$(VERSION) (context: walrus, walrus-cli, rootfs/)"; \
	docker build -f cmd/walrus/Dockerfile --build-arg VERSION=$(VERSION) \
		-t walrus:dev -t walrus:$(VERSION) "$$ctx"

## test-docker: the scenarios of tests/docker against the image with docker-compose. The tests build
## the image (make image) and skip, saying why, where docker or docker-compose does not work.
test-docker:
	WALRUS_TEST_DOCKER=1 $(GO) test -count=1 -timeout 15m ./tests/docker/...

## examples: the nats.go and native protocol example programs into ./bin/examples
examples:
	$(GO) build -o $(BIN)/examples/ ./examples/...

## nats-cli: the nats CLI the docs use, at a pinned version, into ./bin/natscli-<version>/nats
nats-cli: $(NATSCLI)

$(NATSCLI):
	GOBIN=$(dir $(NATSCLI)) CGO_ENABLED=0 $(GO) install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION)

## run: build and start a single node on the defaults (data in ./data, native protocol on 127.0.0.1:8080)
run: build
	$(BIN)/walrus

## test: unit and race tests, the multi-process scenarios, the docker-compose scenarios (where Docker
## works), short fuzz runs (what CI runs)
test: test-unit test-integration test-docker fuzz

UNIT_PKGS = $(shell $(GO) list ./... | grep -v /tests)

test-unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

## test-integration: real walrus processes on loopback (without -race: it starves 3 nodes on 2 cores),
## including the docs' nats CLI commands
## One package at a time (-p 1): each starts clusters of real processes, and two at once on 2 cores
## starve each other. tests/docker runs in test-docker.
test-integration: $(NATSCLI) $(HELM)
	WALRUS_TEST_NATS_CLI=$(NATSCLI) WALRUS_TEST_HELM=$(HELM) $(GO) test -p 1 -count=1 -timeout 25m ./tests/...

## fuzz: run every fuzz target for its number of executions (FUZZTIME=60s: each for a time instead)
# Budgets are execution counts, sized for about 5 s each on a 2-core VM. A
# duration (-fuzztime 8s) races Go's fuzz coordinator at the deadline
# (go.dev/issue/75804, fixed in Go 1.27): a worker still busy when the time
# is up fails the target with a bare "context deadline exceeded" and no
# input. A count has no deadline to race. Minimising a new input is bounded
# by count too; by time it may take the whole run.
FUZZ_TARGETS := \
	./storage:FuzzDecodeFrame:300000 \
	./storage:FuzzRecoverSegment:15000 \
	./broker/protocol:FuzzFrameReader:300000 \
	./broker/protocol:FuzzParse:200000 \
	./bridge:FuzzDecodeRequest:60000 \
	./bridge:FuzzDecodeResponse:50000 \
	./cluster:FuzzJoinMessage:200000

# The fuzzed recovery target fsyncs on every execution, so it runs on tmpfs
# when there is one (crash tests in test-unit run on the real file system).
FUZZ_TMP := $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest#*:}x; \
		[ -z "$(FUZZTIME)" ] || budget=$(FUZZTIME); \
		echo "fuzz $$pkg $$name ($$budget)"; \
		TMPDIR=$(FUZZ_TMP) $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $$budget -fuzzminimizetime 300x $$pkg; \
	done

## bench: the storage benchmark (ceilings, workloads, group-commit curve) and Go benchmarks
bench: build
	$(BIN)/walrus bench storage
	$(MAKE) bench-go

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./storage/
	$(GO) test -run '^$$' -bench BenchmarkProduce -benchtime $(BENCHTIME) ./broker/

## lint: gofmt, go vet, golangci-lint (pinned, installed into ./bin)
lint: $(GOLANGCI) helm-lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI) run ./...

$(GOLANGCI):
	GOBIN=$(BIN) CGO_ENABLED=0 $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)

clean:
	rm -rf $(BIN)

# The Helm chart in helm/walrus: helm at a pinned version (built with go
# install, so it needs nothing but Go), its lint, and the rendering tests in
# tests/helm (no Kubernetes cluster needed).

.PHONY: helm helm-lint test-helm

## helm: the helm CLI the chart is checked with, at a pinned version, into ./bin/helm-<version>/helm
helm: $(HELM)

$(HELM):
	GOBIN=$(dir $(HELM)) CGO_ENABLED=0 $(GO) install -ldflags '-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

## helm-lint: helm lint --strict and helm template of helm/walrus (defaults, ServiceMonitor on) for Kubernetes $(HELM_KUBE_VERSION)
helm-lint: $(HELM)
	$(HELM) lint --strict --kube-version $(HELM_KUBE_VERSION) helm/walrus
	$(HELM) lint --strict --kube-version $(HELM_KUBE_VERSION) --set serviceMonitor.enabled=true helm/walrus
	$(HELM) template walrus helm/walrus --kube-version $(HELM_KUBE_VERSION) >/dev/null
	$(HELM) template walrus helm/walrus --kube-version $(HELM_KUBE_VERSION) --set serviceMonitor.enabled=true >/dev/null

## test-helm: render the chart for several value sets and check the objects, every pod's configuration
## (with the real loader, walrus config check) and the probe paths on a running node
test-helm: $(HELM)
	WALRUS_TEST_HELM=$(HELM) $(GO) test -count=1 -timeout 5m ./tests/helm/
