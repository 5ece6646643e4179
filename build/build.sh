#!/usr/bin/env bash
# Builds out/pilot-discovery (and out/pilot-agent): the pinned Istio source +
# patches/ + our pilot/.
# Incremental: each stage runs only when its inputs changed, and a no-op
# build returns in seconds. See README "Rebasing onto a new Istio release".
set -euo pipefail
source "$(dirname "$0")/lib.sh"
mkdir -p "$work" "$out"

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
patches_hash=$(hash_of "$root/patches")
if [[ "$(cat "$work/patches.stamp" 2>/dev/null)" != "$patches_hash" ]]; then
	rm -f "$work/overlay.list"
	apply_queue || exit 1
	echo "$patches_hash" >"$work/patches.stamp"
fi

# Stage 3: our code on top, and the Consul client in the tree's go.mod.
overlay
add_consul_client

# Stage 4: compile, unless nothing that goes into the binary changed.
istio_base="istio.io/istio@$ISTIO_VERSION"
[[ -z "${ISTIO_SRC:-}" ]] || istio_base="$(git -C "$src" describe --tags --always 2>/dev/null || basename "$src")"
version="${ISTIO_RELEASE_LINE}+pilot-consul-${PILOT_CONSUL_VERSION}"
# Only what is compiled in counts: editing a test must not relink istiod.
code_hash=$(find "$root/pilot" -type f -name '*.go' ! -name '*_test.go' ! -path '*/testdata/*' -print0 |
	sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
stamp="$(go version) $version $istio_base $patches_hash $code_hash $(hash_of "$root/go.mod" "$root/go.sum")"
if [[ -x "$out/pilot-discovery" && -x "$out/pilot-agent" && "$(cat "$out/.pilot-discovery.stamp" 2>/dev/null)" == "$stamp" ]]; then
	log "out/pilot-discovery and out/pilot-agent are up to date ($version)"
	exit 0
fi

# The same inputs built from another clone: reuse (only for the pinned
# module source; an ISTIO_SRC tree can change under the same name).
saved=""
[[ -n "${ISTIO_SRC:-}" ]] || saved="$cache/istiod/$(echo "$stamp" | sha256sum | cut -c1-16)"
if [[ -n "$saved" && -x "$saved/pilot-discovery" && -x "$saved/pilot-agent" ]]; then
	cp "$saved/pilot-discovery" "$saved/pilot-agent" "$out/"
	echo "$stamp" >"$out/.pilot-discovery.stamp"
	log "out/pilot-discovery and out/pilot-agent reused from $saved ($version)"
	exit 0
fi

# pilot-agent comes from the same tree: the proxy image of proxyless gRPC
# pods runs it without Envoy (build/docker.sh). One go build shares the compile.
log "compiling pilot-discovery and pilot-agent $version (cold: a few minutes)"
start=$SECONDS
pkgver=istio.io/istio/pkg/version
rm -rf "$out/.build" && mkdir -p "$out/.build"
(cd "$tree" && CGO_ENABLED=0 go build -o "$out/.build/" \
	-ldflags "-s -w -X $pkgver.buildVersion=$version -X $pkgver.buildGitRevision=$istio_base -X $pkgver.buildTag=pilot-consul-$PILOT_CONSUL_VERSION -X $pkgver.buildStatus=Clean" \
	./pilot/cmd/pilot-discovery ./pilot/cmd/pilot-agent)
if [[ -n "$saved" ]]; then
	mkdir -p "$saved.tmp" && cp "$out/.build/pilot-discovery" "$out/.build/pilot-agent" "$saved.tmp/"
	rm -rf "$saved" && mv "$saved.tmp" "$saved"
fi
mv "$out/.build/pilot-discovery" "$out/.build/pilot-agent" "$out/"
rmdir "$out/.build"
echo "$stamp" >"$out/.pilot-discovery.stamp"
log "built out/pilot-discovery and out/pilot-agent in $((SECONDS - start))s"
