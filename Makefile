# meshagent: `make demo` runs a small mesh on this machine; `make test` runs
# every check CI runs. `make help` lists the targets.

GO            ?= go
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
GOBIN         := $(shell $(GO) env GOPATH)/bin
PROTOS        := trust/trustpb/trust.proto protocol/protocolpb/protocol.proto
SOAK_DURATION ?= 10m
# Actions every agent of `make sim500` advertises before the cold start
# (the memory goal with advertisements: `make sim500 SIM500_ACTIONS=32`).
SIM500_ACTIONS ?= 0
# Go's soft memory limit for it: the goal is a peak RSS under 1.5 GiB; 32
# actions per agent add about 0.3 MiB a node, so they get more room.
SIM500_MEMLIMIT ?= $(if $(filter 0,$(SIM500_ACTIONS)),1400MiB,1850MiB)
# The simulation and attack hooks (node/sim_on.go) and everything that
# uses them (simulations, the demo, most tests) build only with this tag;
# the meshagent binary never has it.
SIM           := -tags meshsim
# What `make release` stamps into the binaries (meshagent version,
# meshagent_build_info), and the platforms it builds.
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION      ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
RELEASE_LDFLAGS  = -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)
PLATFORMS     := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
# The npm packages of the MCP end-to-end test (cmd/meshagent/mcp_npm_e2e_test.go),
# pinned in its package-lock.json.
MCP_E2E       := test/mcp-e2e

.PHONY: help demo test e2e check lint race build release deploy-check bench bench-dialloop bench-attacks fuzz proto tidy sim sim500 sim1000 soak chromium console-screenshot

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

demo: ## run a small mesh on 127.0.0.1: calls that pass, attacks that fail
	$(GO) run $(SIM) ./cmd/meshagent-demo

test: lint $(MCP_E2E)/node_modules/.package-lock.json chromium ## gofmt, vet, staticcheck, then every test (-race) with fuzz seeds
	$(GO) test $(SIM) -race -count=1 -timeout 8m ./...
	@# The virtual-time tests skip themselves under -race (golang/go#78156),
	@# and so do the attacks that measure the target's CPU.
	$(GO) test $(SIM) -count=1 -timeout 5m -run 'TestVirtualTimeScenario|TestPauseUnderTheTimeoutIsNoDeath|TestSeparateResourceAttacks' ./simulations
	$(GO) test $(SIM) -count=1 -timeout 5m -run 'TestSilentConnectionsLeaveRoomForNewAgents|TestHonestLoadIsNeverLockedOut|TestOutsiderStreamsDoNotStarveCalls' ./node
	$(MAKE) deploy-check

# deploy/check is a module of its own (it needs the Prometheus server's
# rule and PromQL parsers, which the product's go.mod should not carry).
deploy-check: ## check deploy/: alert rules and dashboard against a running daemon, compose, k8s, Dockerfile, systemd unit
	@test -x $(GOBIN)/staticcheck || $(GO) install $(STATICCHECK)
	cd deploy/check && $(GO) vet ./... && $(GOBIN)/staticcheck ./... && $(GO) test -count=1 -timeout 5m ./...

# npm ci installs exactly the lock file, into the test's folder; again
# whenever package.json or the lock file is newer than what it installed.
# Without npm, the test skips itself (it needs node).
$(MCP_E2E)/node_modules/.package-lock.json: $(MCP_E2E)/package.json $(MCP_E2E)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(MCP_E2E) && npm ci --ignore-scripts --no-audit --no-fund && touch node_modules/.package-lock.json; \
	else echo "npm not found: TestMCPNpmEndToEnd will skip"; fi

# The console's browser test (cmd/meshagent/console_browser_test.go) drives
# headless Chromium. As root (CI on a fresh Debian machine) this installs
# Debian's chromium when no Chromium is on the PATH; otherwise the test
# skips itself and says why.
chromium: ## install Debian's chromium for the console's browser test, as root, when none is found
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; \
	else echo "chromium not found and not root: TestConsoleInBrowser will skip"; fi

console-screenshot: chromium ## the console in headless Chromium, saved as docs/img/console.png
	MESHAGENT_CONSOLE_SCREENSHOT=$(CURDIR)/docs/img/console.png $(GO) test $(SIM) -count=1 -run TestConsoleInBrowser ./cmd/meshagent

lint: ## gofmt, go vet and staticcheck, with and without the simulation hooks
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'))"; \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet $(SIM) ./...
	@test -x $(GOBIN)/staticcheck || $(GO) install $(STATICCHECK)
	$(GOBIN)/staticcheck ./...
	$(GOBIN)/staticcheck $(SIM) ./...

e2e: build ## six daemons in network namespaces on a bridge, driven by the CLI (root; about a minute; skips without)
	test/e2e/run.sh

build: ## build the meshagent binary into ./bin
	$(GO) build -trimpath -o bin/meshagent ./cmd/meshagent

release: ## static binaries for linux and darwin (amd64, arm64) in dist/, with SHA256SUMS and the version stamped in
	rm -rf dist && mkdir -p dist
	@set -e; for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; out=dist/meshagent-$(VERSION)-$$os-$$arch; \
	  echo "build $$out"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(RELEASE_LDFLAGS)' -o $$out ./cmd/meshagent; \
	done
	cd dist && sha256sum meshagent-* > SHA256SUMS && cat SHA256SUMS

bench: ## run the benchmarks recorded in BENCHMARKS.md
	$(GO) test $(SIM) -run '^$$' -bench . -benchmem ./protocol/ ./node/

bench-dialloop: ## what a fresh-identity dial loop costs a node (about two minutes; BENCHMARKS.md)
	$(GO) test $(SIM) ./node -run '^$$' -bench FreshIdentityDialLoop -benchtime 1x -timeout 10m

bench-attacks: ## honest calls and what the target holds under each resource attack (about seven minutes; BENCHMARKS.md)
	$(GO) test $(SIM) ./simulations -run '^$$' -bench ResourceAttacks -benchtime 1x -timeout 20m -v

fuzz: ## fuzz every decoder for 30 s each
	$(GO) test ./trust -run '^$$' -fuzz FuzzParseToken -fuzztime 30s
	$(GO) test ./trust -run '^$$' -fuzz FuzzParseCredential -fuzztime 30s
	$(GO) test ./trust -run '^$$' -fuzz FuzzParseRevocation -fuzztime 30s
	$(GO) test ./trust -run '^$$' -fuzz FuzzVerifyDifferential -fuzztime 30s
	$(GO) test ./trust -run '^$$' -fuzz FuzzSignDifferential -fuzztime 30s
	$(GO) test ./protocol -run '^$$' -fuzz FuzzDecide -fuzztime 30s
	$(GO) test ./protocol -run '^$$' -fuzz FuzzOpenMatchesFullDecode -fuzztime 30s
	$(GO) test ./discovery -run '^$$' -fuzz FuzzParseRecord -fuzztime 30s
	$(GO) test ./discovery -run '^$$' -fuzz FuzzVerifyBeat -fuzztime 30s
	$(GO) test ./discovery -run '^$$' -fuzz FuzzVerifyAdvert -fuzztime 30s
	$(GO) test ./node/internal/frame -run '^$$' -fuzz FuzzReadGrowing -fuzztime 30s
	$(GO) test ./cmd/meshagent -run '^$$' -fuzz FuzzConsoleInspect -fuzztime 30s
	$(GO) test ./node/internal/frame -run '^$$' -fuzz FuzzReadExact -fuzztime 30s
	$(GO) test ./cmd/meshagent -run '^$$' -fuzz FuzzParseAuditLine -fuzztime 30s
	$(GO) test ./cmd/meshagent -run '^$$' -fuzz FuzzVerifyAuditFile -fuzztime 30s

proto: ## regenerate the protobuf code (needs protoc: apt-get install protobuf-compiler)
	$(GO) install $(PROTOC_GEN_GO)
	protoc --plugin=$(GOBIN)/protoc-gen-go --go_out=. --go_opt=module=github.com/meshagent/meshagent -I . $(PROTOS)

tidy: ## fail when go.mod or go.sum drift
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum

sim500: ## the seeded 500-node release scenario in virtual time (about 4 minutes, under 1.5 GiB)
	GOMEMLIMIT=$(SIM500_MEMLIMIT) MESHAGENT_VIRTUAL_N=500 MESHAGENT_VIRTUAL_ACTIONS=$(SIM500_ACTIONS) $(GO) test $(SIM) -count=1 -timeout 45m -run TestVirtualTimeScenario -v ./simulations

sim1000: ## the same scenario with 1000 nodes (about 17 minutes, under 4 GiB; goal 10 minutes)
	GOMEMLIMIT=3800MiB MESHAGENT_VIRTUAL_N=1000 $(GO) test $(SIM) -count=1 -timeout 60m -run TestVirtualTimeScenario -v ./simulations

sim: ## run the large simulation scenarios and write docs/simulation-report.md (several minutes)
	$(GO) run $(SIM) ./cmd/simreport -out docs
	MESHAGENT_VIRTUAL_N=100 $(GO) test $(SIM) -count=1 -run TestVirtualTimeScenario -v ./simulations

soak: build ## two daemons under full load for SOAK_DURATION (10m): docs/soak-report.md, memory and throughput plots
	$(GO) run ./simulations/soak -meshagent bin/meshagent -duration $(SOAK_DURATION) -out docs
