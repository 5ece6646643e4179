#!/usr/bin/env bash
# Builds out/<tag>/pilot-discovery, pilot-agent and consul-mcp (our MCP
# server) for the Istio release ISTIO (default: VERSION's ISTIO_DEFAULT):
# its pinned source + patches/ + our pilot/, mcp/ and cmd/consul-mcp, and
# links out/pilot-discovery and out/pilot-agent to them.
# Incremental: each stage runs only when its inputs changed, and a no-op
# build returns in seconds. See docs/rebasing.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
mkdir -p "$work"

src=$(istio_source)

if [[ -d "$tree/.git/rebase-apply" ]]; then
	die "a patch is half-applied in $tree (an earlier build stopped on a conflict).
  Finish it (git am --continue, then 'make rebase'), or start over with 'make clean-work'."
fi

# Stage 1: pristine copy of the source, re-made only when the source changes.
if [[ ! -d "$tree/.git" || "$(cat "$work/source" 2>/dev/null)" != "$src" ]]; then
	init_pristine "$src"
	rm -f "$work/patches.stamp"
fi

# Stage 2: the patch queue, re-applied from pristine whenever patches/ changes.
skip_file=()
[[ -f "$root/build/istio/$ISTIO.skip" ]] && skip_file=("$root/build/istio/$ISTIO.skip")
patches_hash=$(hash_of "$root/patches" "${skip_file[@]}")
if [[ "$(cat "$work/patches.stamp" 2>/dev/null)" != "$patches_hash" ]]; then
	rm -f "$work/overlay.list"
	apply_queue || exit 1
	echo "$patches_hash" >"$work/patches.stamp"
fi

# Stage 3: our code on top; upstream's dependency pins, or their listed
# substitutes where the module proxy lacks them; the Consul client; the
# workspace our tests run in.
overlay
# From the queue's go.mod and go.sum every time: the last run's Consul client
# may have raised a pin substitute_deps checks for (1.31's istio.io/api).
git -C "$tree" checkout -q HEAD -- go.mod go.sum
substitute_deps
add_consul_client
write_workspace

# Stage 4: compile, unless nothing that goes into the binary changed.
commit=$(pin COMMIT)
version="${ISTIO}+pilot-consul-${PILOT_CONSUL_VERSION}"
# Only what is compiled in counts: editing a test must not relink istiod.
code_hash=$(overlay_sources | hash_files)
stamp="$(go version) $version $(git -C "$tree" rev-parse 'pristine^{tree}') $patches_hash $code_hash $(hash_of "$tree/go.mod" "$tree/go.sum")"

# link_outputs points out/<binary> at this release's, for `out/pilot-discovery version`.
link_outputs() {
	local b
	for b in pilot-discovery pilot-agent; do ln -sfn "$ISTIO/$b" "$root/out/$b"; done
}

# pilot-agent comes from the same tree: the proxy image of proxyless gRPC
# pods runs it without Envoy (build/docker.sh); so does consul-mcp. One go
# build shares the compile. -trimpath, here and in build-upstream.sh: the
# package paths, not the trees' directories, key the build cache, so the
# release's unpatched packages compile once for both istiods.
compile() {
	local pkgver=istio.io/istio/pkg/version
	log "compiling pilot-discovery, pilot-agent and consul-mcp $version (cold: a few minutes)"
	(cd "$tree" && CGO_ENABLED=0 go build -trimpath -o "$1" \
		-ldflags "-s -w -X $pkgver.buildVersion=$version -X $pkgver.buildGitRevision=$commit -X $pkgver.buildTag=$ISTIO -X $pkgver.buildStatus=Clean" \
		./pilot/cmd/pilot-discovery ./pilot/cmd/pilot-agent ./cmd/consul-mcp)
}

start=$SECONDS
did=$(istiod_binaries "$out" "$stamp" "" "pilot-discovery pilot-agent consul-mcp" compile)
link_outputs
case $did in
kept) log "out/$ISTIO/pilot-discovery, pilot-agent and consul-mcp are up to date ($version)" ;;
built) log "built out/$ISTIO/pilot-discovery, pilot-agent and consul-mcp in $((SECONDS - start))s" ;;
*) log "out/$ISTIO/pilot-discovery, pilot-agent and consul-mcp ${did/reused/reused from} ($version)" ;;
esac
