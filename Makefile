# pilot-consul: a Consul service registry compiled into Istio's pilot-discovery.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

include VERSION
# The Istio release to build and test: make build ISTIO=1.30.3.
ISTIO ?= $(ISTIO_DEFAULT)
export ISTIO
HUB ?= localhost:5000/pilot-consul
TAG ?= $(ISTIO)-pilot-consul-$(PILOT_CONSUL_VERSION)
# Our module's tests run against the release's patched tree (build/build.sh
# writes this workspace); go.mod's istio.io/istio is for editors only.
WORKSPACE = GOWORK=$(CURDIR)/_work/$(ISTIO)/go.work
FUZZTIME ?= 60s
KEEP ?=
BENCH_ARGS ?=
BENCH_OUT ?= results
# The pictures' module (gonum/plot) is not in the release workspace.
PLOTS = GOWORK=off go -C tests/plots

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Main

.PHONY: demo
demo: build tools ## Run the local mesh demo (KEEP=1 leaves it up until Ctrl-C).
	$(WORKSPACE) go build -o bin/demo ./tests/cmd/demo
	bin/demo $(if $(KEEP),-keep)

.PHONY: test
test: ## Run every test (what CI runs): builds, then each tier once, with each tier's wall time printed at the end.
	build/docker-up.sh check # fail now, not after the local tiers, where the kind tier cannot run
	build/tiers.sh builds test-unit test-upstream test-integration test-kind

.PHONY: builds
builds: build build-upstream tools ## Every binary the tiers share: ours and the release's istiod, Consul, kube-apiserver, etcd.
	ISTIO=$(ISTIO_PREVIOUS) build/build.sh

.PHONY: bench
bench: build build-upstream tools ## Benchmark Route A (our registry) vs K (Kubernetes Services), C (consul-mcp + istiod as shipped) and B (ServiceEntry/WorkloadEntry) into BENCH_OUT (BENCH_ARGS=...).
	$(WORKSPACE) go build -o bin/bench ./tests/cmd/bench
	bin/bench -out $(BENCH_OUT) $(BENCH_ARGS)
	$(MAKE) plots PLOTS_DIR=$(BENCH_OUT)

PLOTS_DIR ?= tests/bench/results
.PHONY: plots
plots: ## Draw the bench's pictures (gonum/plot, tests/plots) from PLOTS_DIR/bench.json into PLOTS_DIR, and a flame graph beside every CPU profile in PLOTS_DIR/profiles.
	$(PLOTS) run . bench -out $(abspath $(PLOTS_DIR)) $(abspath $(PLOTS_DIR))/bench.json
	if [ -d $(PLOTS_DIR)/profiles ]; then $(PLOTS) run . flame $(abspath $(PLOTS_DIR))/profiles; fi

.PHONY: dashboard-picture
dashboard-picture: build tools ## Record istiod's metrics through a scripted scenario (~4 min) and draw the dashboard from them into docs/dashboard/.
	$(WORKSPACE) go build -o bin/metrics-recorder ./tests/cmd/metrics-recorder
	bin/metrics-recorder -out docs/dashboard/scrapes.txt.gz
	$(PLOTS) run . dashboard -dashboard $(CURDIR)/build/install/observability/dashboard.json \
		-out $(CURDIR)/docs/dashboard/dashboard.png $(CURDIR)/docs/dashboard/scrapes.txt.gz

##@ Build

.PHONY: build
build: ## Build out/<release>/pilot-discovery and pilot-agent (Istio ISTIO, default ISTIO_DEFAULT, + patches/ + pilot/).
	build/build.sh

.PHONY: build-upstream
build-upstream: ## Build out/<release>-upstream/pilot-discovery: the release as shipped (no patches, no overlay), the istiod of users who cannot replace theirs.
	build/build-upstream.sh

.PHONY: tools
tools: ## Build the real servers the local tier uses (Consul, kube-apiserver; etcd from Debian), cached by version.
	build/tools.sh all

.PHONY: manifests
manifests: ## Render the istioctl overlay (build/install/) with the patched istioctl into out/manifests/: HUB=... TAG=...
	HUB="$(HUB)" TAG="$(TAG)" build/manifests.sh

.PHONY: docker
docker: build ## Build the istiod, proxyless-gRPC proxy and consul-mcp images (needs a Docker daemon): HUB=... TAG=...
	build/docker.sh build "$(HUB)" "$(TAG)"

.PHONY: docker-push
docker-push: docker ## Push both images: HUB=... TAG=...
	build/docker.sh push "$(HUB)" "$(TAG)"

##@ Patch queue

.PHONY: rebase
rebase: ## Regenerate patches/ from the work tree after resolving conflicts.
	build/rebase.sh

.PHONY: verify-patches
verify-patches: ## Check the queue: names, headers, parse, and that it applies to both releases and the newest upstream source.
	build/verify-patches.sh

.PHONY: clean-work
clean-work: ## Remove the patched Istio work trees of every release (the next build starts from pristine).
	rm -rf _work

##@ Test

# How many times test-unit runs each registry test: once in make test (CI),
# three times in test-unit-repeat.
UNIT_COUNT ?= 1
RUNS ?= 5

.PHONY: test-unit
test-unit: build tools ## Registry tests (real Consul agents and cluster; race detector; the simulated day once) plus build-pipeline tests. UNIT_COUNT=3 repeats each.
	$(WORKSPACE) go test -race -count=$(UNIT_COUNT) -timeout 20m -skip '^TestADayOfQuietAndBursts$$' ./pilot/... ./mcp/...
	$(WORKSPACE) go test -race -count=1 -timeout 10m -run '^TestADayOfQuietAndBursts$$' ./pilot/pkg/serviceregistry/consul/
	$(WORKSPACE) go test -count=1 ./build/...

.PHONY: test-unit-repeat
test-unit-repeat: ## test-unit with every registry test run three times (not in CI: finds rare interleavings).
	$(MAKE) test-unit UNIT_COUNT=3

.PHONY: test-contention
test-contention: build tools ## test-unit RUNS times (default 5) in a row while two busy loops compete for the cores, as on a loaded CI machine.
	build/contention.sh $(RUNS) $(MAKE) test-unit

.PHONY: test-upstream
test-upstream: ## Upstream Istio tests of every patched package, on the previous release (built too), then on ISTIO.
	ISTIO=$(ISTIO_PREVIOUS) build/build.sh
	ISTIO=$(ISTIO_PREVIOUS) build/test-upstream.sh
	build/build.sh
	build/test-upstream.sh

.PHONY: test-integration
test-integration: build build-upstream tools ## End-to-end: patched istiod (and consul-mcp beside the release istiod) + Consul + kube-apiserver + gRPC xDS clients.
	$(WORKSPACE) go test -count=1 -p 1 -timeout 20m ./tests/...
	$(PLOTS) test -count=1 ./...

.PHONY: test-local
test-local: test-unit test-upstream test-integration ## The tiers that need no Docker (unit, upstream, local mesh).

.PHONY: test-kind
test-kind: ## The kind tier: our images, built offline, installed by istioctl into kind (KEEP=1 keeps the cluster).
	KEEP="$(KEEP)" build/e2e-kind.sh

.PHONY: e2e-kind
e2e-kind: test-kind ## Same as test-kind.

.PHONY: test-soak
test-soak: build tools ## Long runs: churn soak (1,000 services, 500 changes/s, 60 s), 6 quiet minutes, then 10 minutes of fuzzing.
	PILOT_CONSUL_SOAK_SERVICES=1000 PILOT_CONSUL_SOAK_RATE=500 PILOT_CONSUL_SOAK_SECONDS=60 PILOT_CONSUL_QUIET=6m \
		$(WORKSPACE) go test -count=1 -v -timeout 30m -run 'TestChurnSoak|TestQuietRun' ./tests/soak/
	$(MAKE) fuzz FUZZTIME=10m

.PHONY: fuzz
fuzz: build ## Fuzz the Consul-to-Istio conversion for FUZZTIME (default 60s).
	$(WORKSPACE) go test ./pilot/pkg/serviceregistry/consul -run '^$$' -fuzz FuzzConvert -fuzztime $(FUZZTIME)
