#!/usr/bin/env bash
# Builds out/<tag>-upstream/pilot-discovery: the release's pinned source as
# upstream ships it — no patches/, no pilot/ overlay, only the dependency
# substitutions build/istio/<tag>.deps lists for pins the module proxy lacks —
# the istiod that users who cannot replace theirs run. Reused across clones
# by its inputs, like build.sh's.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$root/build/build.sh" # the work tree with its "pristine" commit, checked against VERSION's pin

up="$work/upstream"
pristine=$(git -C "$tree" rev-parse pristine)
if [[ "$(git -C "$up" rev-parse HEAD 2>/dev/null)" != "$pristine" ]]; then
	rm -rf "$up"
	git -C "$tree" worktree prune
	git -C "$tree" worktree add -q --detach "$up" "$pristine"
fi
# Only the substitutions, on upstream's go.mod and go.sum.
git -C "$up" checkout -q -- go.mod go.sum
tree=$up substitute_deps
# A substitute may require more than upstream's pins (1.31's client-go
# v1.31.0 needs a later istio.io/api): settle the requirements as the
# patched build's go get does, and say what moved.
cp "$up/go.mod" "$work/upstream.go.mod.before"
(cd "$up" && GOFLAGS=-mod=mod go list -deps ./pilot/cmd/pilot-discovery >/dev/null)
requirement_changes "$work/upstream.go.mod.before" "$up/go.mod"

uout="$root/out/$ISTIO-upstream"
commit=$(pin COMMIT)
stamp="$(go version) upstream $ISTIO $(git -C "$up" rev-parse 'HEAD^{tree}') $(hash_of "$up/go.mod" "$up/go.sum")"
# The release's own go.mod only: the work dir's go.work (above $up) is the
# patched tree's.
compile() {
	local pkgver=istio.io/istio/pkg/version
	log "compiling upstream pilot-discovery $ISTIO (cold: a few minutes; shares most packages with the patched build)"
	(cd "$up" && GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$1" \
		-ldflags "-s -w -X $pkgver.buildVersion=$ISTIO -X $pkgver.buildGitRevision=$commit -X $pkgver.buildTag=$ISTIO -X $pkgver.buildStatus=Clean" \
		./pilot/cmd/pilot-discovery)
}

start=$SECONDS
did=$(istiod_binaries "$uout" "$stamp" upstream- pilot-discovery compile)
case $did in
kept) log "out/$ISTIO-upstream/pilot-discovery is up to date (Istio $ISTIO as released)" ;;
built) log "built out/$ISTIO-upstream/pilot-discovery in $((SECONDS - start))s" ;;
*) log "out/$ISTIO-upstream/pilot-discovery ${did/reused/reused from}" ;;
esac
