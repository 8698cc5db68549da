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
# The simulation and attack hooks (node/sim_on.go) and everything that
# uses them (simulations, the demo, most tests) build only with this tag;
# the meshagent binary never has it.
SIM           := -tags meshsim
# The npm packages of the MCP end-to-end test (cmd/meshagent/mcp_npm_e2e_test.go),
# pinned in its package-lock.json.
MCP_E2E       := test/mcp-e2e

.PHONY: help demo test check lint race build bench bench-dialloop bench-attacks fuzz proto tidy sim sim500 soak

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

demo: ## run a small mesh on 127.0.0.1: calls that pass, attacks that fail
	$(GO) run $(SIM) ./cmd/meshagent-demo

test: lint $(MCP_E2E)/node_modules/.package-lock.json ## gofmt, vet, staticcheck, then every test (-race) with fuzz seeds
	$(GO) test $(SIM) -race -count=1 -timeout 8m ./...
	@# The virtual-time tests skip themselves under -race (golang/go#78156),
	@# and so do the attacks that measure the target's CPU.
	$(GO) test $(SIM) -count=1 -timeout 5m -run 'TestVirtualTimeScenario|TestPauseUnderTheTimeoutIsNoDeath|TestSeparateResourceAttacks' ./simulations
	$(GO) test $(SIM) -count=1 -timeout 5m -run 'TestSilentConnectionsLeaveRoomForNewAgents|TestHonestLoadIsNeverLockedOut|TestOutsiderStreamsDoNotStarveCalls' ./node

# npm ci installs exactly the lock file, into the test's folder; again
# whenever package.json or the lock file is newer than what it installed.
# Without npm, the test skips itself (it needs node).
$(MCP_E2E)/node_modules/.package-lock.json: $(MCP_E2E)/package.json $(MCP_E2E)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(MCP_E2E) && npm ci --ignore-scripts --no-audit --no-fund && touch node_modules/.package-lock.json; \
	else echo "npm not found: TestMCPNpmEndToEnd will skip"; fi

lint: ## gofmt, go vet and staticcheck, with and without the simulation hooks
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'))"; \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet $(SIM) ./...
	@test -x $(GOBIN)/staticcheck || $(GO) install $(STATICCHECK)
	$(GOBIN)/staticcheck ./...
	$(GOBIN)/staticcheck $(SIM) ./...

build: ## build the meshagent binary into ./bin
	$(GO) build -trimpath -o bin/meshagent ./cmd/meshagent

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
	$(GO) test ./protocol -run '^$$' -fuzz FuzzDecide -fuzztime 30s
	$(GO) test ./discovery -run '^$$' -fuzz FuzzParseRecord -fuzztime 30s
	$(GO) test ./discovery -run '^$$' -fuzz FuzzVerifyBeat -fuzztime 30s
	$(GO) test ./discovery -run '^$$' -fuzz FuzzVerifyAdvert -fuzztime 30s
	$(GO) test ./node/internal/frame -run '^$$' -fuzz FuzzReadGrowing -fuzztime 30s

proto: ## regenerate the protobuf code (needs protoc: apt-get install protobuf-compiler)
	$(GO) install $(PROTOC_GEN_GO)
	protoc --plugin=$(GOBIN)/protoc-gen-go --go_out=. --go_opt=module=github.com/meshagent/meshagent -I . $(PROTOS)

tidy: ## fail when go.mod or go.sum drift
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum

sim500: ## the seeded 500-node release scenario in virtual time (about 9 minutes, under 2 GiB)
	GOMEMLIMIT=1850MiB MESHAGENT_VIRTUAL_N=500 MESHAGENT_VIRTUAL_ACTIONS=$(SIM500_ACTIONS) $(GO) test $(SIM) -count=1 -timeout 45m -run TestVirtualTimeScenario -v ./simulations

sim: ## run the large simulation scenarios and write docs/simulation-report.md (several minutes)
	$(GO) run $(SIM) ./cmd/simreport -out docs
	MESHAGENT_VIRTUAL_N=100 $(GO) test $(SIM) -count=1 -run TestVirtualTimeScenario -v ./simulations

soak: build ## two daemons under full load for SOAK_DURATION (10m): docs/soak-report.md, memory and throughput plots
	$(GO) run ./simulations/soak -meshagent bin/meshagent -duration $(SOAK_DURATION) -out docs
