#!/usr/bin/env bash
# The kind tier (make test-kind, part of make test): our istiod image
# installed by istioctl into a kind cluster, all built here with no registry.
#   1. Docker: the daemon that answers, or our own (build/docker-up.sh),
#      stopped again at the end if this run started it;
#   2. images: the kind node image (build/kind-node.sh, cached by its inputs;
#      E2E_KIND_NODE_IMAGE uses any other, e.g. a published kindest/node), our
#      release images (build/docker.sh: pilot, proxyv2) for ISTIO and for the
#      previous minor (the upgrade cases), the release's istiod as shipped,
#      Consul from our Consul build, the e2e-echo workload;
#   3. the Docker network "kind" on 198.19.254.0/24 (kind reuses it);
#   4. the Go suite (tests/e2e/kind) creates the cluster, deploys Consul with
#      ACLs, installs Istio with out/istioctl and runs the cases (helm, built
#      from its module, installs the revision and upgrade cases' istiods with
#      each release's own chart).
# Everything made for the run is removed at the end (KEEP=1 keeps the
# cluster, and so the daemon and network it needs). One run at a time per
# machine (they share the daemon, the network and the image tags): a second
# waits for the first; a cluster found at the start was left by a killed run
# or by KEEP=1, and is deleted.
#
# usage: build/e2e-kind.sh   (make test-kind / make e2e-kind; E2E_RUN=REGEXP runs only those tests)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

hub=${E2E_HUB:-localhost/pilot-consul}
tag=${E2E_TAG:-e2e}
cluster=${E2E_KIND_CLUSTER:-pilot-consul-e2e}
kind_subnet=198.19.254.0/24

dockerd_pid=""
ctx=""
cleanup() {
	local rc=$? # first: the suite's verdict is the script's
	[[ -z "$ctx" ]] || rm -rf "$ctx"
	if [[ -z "${KEEP:-}" ]]; then
		# The suite deletes its cluster; this covers a suite that was killed.
		"$root/bin/kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
		# Ours, by label: also one a killed earlier run left behind.
		if [[ "$(docker network inspect kind --format '{{index .Labels "io.pilot-consul"}}' 2>/dev/null)" == kind-tier ]]; then
			docker network rm kind >/dev/null 2>&1 || true
		fi
		docker rmi "$hub/pilot:$tag" "$hub/proxyv2:$tag" "$hub/consul-mcp:$tag" "$hub/pilot:$tag-upstream" \
			"$hub/pilot:$tag-previous" "$hub/proxyv2:$tag-previous" "$hub/consul-mcp:$tag-previous" \
			"$hub/e2e-echo:$tag" >/dev/null 2>&1 || true
		docker image prune -f >/dev/null 2>&1 || true # untagged leftovers of earlier builds
		if [[ -n "$dockerd_pid" ]]; then "$root/build/docker-up.sh" stop; fi
	fi
	exit $rc
}
trap cleanup EXIT

mkdir -p "$cache"
exec 9>"$cache/kind-tier.lock"
if ! flock -n 9; then
	log "another kind tier runs on this machine; waiting for it to end"
	flock 9
fi

if ! docker info >/dev/null 2>&1; then
	# 9>&-: the daemon outlives this script under KEEP=1 and must not hold the lock.
	eval "$("$root/build/docker-up.sh" 9>&-)"
	dockerd_pid=${PILOT_CONSUL_DOCKERD_PID:-}
fi

# CONSUL_BIN: the user's own Consul instead of our build (as in the local tiers).
if [[ -n ${CONSUL_BIN:-} ]]; then "$root/build/tools.sh" kind helm; else "$root/build/tools.sh" kind consul helm; fi
# A killed run's node containers come back with the daemon's data root (in
# the cache), and kind refuses to create a cluster whose nodes exist.
if "$root/bin/kind" get clusters 2>/dev/null | grep -qx "$cluster"; then
	log "deleting kind cluster $cluster, left by an earlier run (killed, or KEEP=1)"
	"$root/bin/kind" delete cluster --name "$cluster" >/dev/null
fi
HUB="$hub" TAG="$tag" "$root/build/manifests.sh" >/dev/null # out/istioctl of the patched tree
"$root/build/docker.sh" build "$hub" "$tag"
"$root/build/docker.sh" upstream "$hub" "$tag-upstream" # the MCP and canary cases' istiod, as shipped
# Our build of the previous minor, with its pilot-agent (its proxies may not
# be newer than its istiod): the upgrade case's N-1. Its chart comes from its
# work tree, which build.sh prepares.
ISTIO=$ISTIO_PREVIOUS "$root/build/docker.sh" build "$hub" "$tag-previous"

node_image=${E2E_KIND_NODE_IMAGE:-}
own_node=""
if [[ -z "$node_image" ]]; then
	node_image=$("$root/build/kind-node.sh")
	own_node=1
fi

ctx=$(mktemp -d)
# Consul from our Consul build, cached by that build (its path names the
# version), or CONSUL_BIN, named by its checksum.
if [[ -n ${CONSUL_BIN:-} ]]; then
	consul_bin=$(readlink -f "$CONSUL_BIN")
	consul_image="pilot-consul/consul:user-$(sha256sum <"$consul_bin" | cut -c1-12)"
else
	consul_bin=$(readlink -f "$root/bin/consul")
	consul_image="pilot-consul/consul:$(basename "$(dirname "$consul_bin")")"
fi
log "Consul for the kind tier: $("$consul_bin" version | head -1) ($consul_bin)"
if ! docker image inspect "$consul_image" >/dev/null 2>&1; then
	mkdir -p "$ctx/consul/tmp" && chmod 1777 "$ctx/consul/tmp"
	cp "$consul_bin" "$ctx/consul/consul"
	cp "$root/tests/e2e/kind/consul.Dockerfile" "$ctx/consul/Dockerfile"
	docker_build -t "$consul_image" "$ctx/consul"
	log "built $consul_image"
fi
mkdir -p "$ctx/echo"
GOWORK="$work/go.work" CGO_ENABLED=0 go build -o "$ctx/echo/e2e-echo" ./tests/cmd/e2e-echo
cp "$root/tests/e2e/kind/echo.Dockerfile" "$ctx/echo/Dockerfile"
docker_build -t "$hub/e2e-echo:$tag" "$ctx/echo"

if ! docker network inspect kind >/dev/null 2>&1; then
	docker network create kind --subnet "$kind_subnet" --gateway "${kind_subnet%.0/24}.1" \
		--label io.pilot-consul=kind-tier -o com.docker.network.bridge.enable_ip_masquerade=false >/dev/null
fi
got=$(docker network inspect kind --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}')
[[ "$got" == "$kind_subnet " ]] || die "the Docker network 'kind' has subnet(s) $got, want $kind_subnet
  (delete it, or every cluster address would not be inside 198.18.0.0/15)"

E2E_NODE_IMAGE="$node_image" E2E_OWN_NODE_IMAGE="$own_node" \
	E2E_PILOT_IMAGE="$hub/pilot:$tag" E2E_PROXY_HUB="$hub" E2E_PROXY_TAG="$tag" \
	E2E_MCP_IMAGE="$hub/consul-mcp:$tag" E2E_UPSTREAM_PILOT_IMAGE="$hub/pilot:$tag-upstream" \
	E2E_PREVIOUS_RELEASE="$ISTIO_PREVIOUS" E2E_PREVIOUS_PILOT_IMAGE="$hub/pilot:$tag-previous" \
	E2E_PREVIOUS_PROXY_TAG="$tag-previous" \
	E2E_ECHO_IMAGE="$hub/e2e-echo:$tag" E2E_CONSUL_IMAGE="$consul_image" \
	GOWORK="$work/go.work" go test -tags e2ekind -count=1 -v -timeout 40m ${E2E_RUN:+-run "$E2E_RUN"} ./tests/e2e/kind/
