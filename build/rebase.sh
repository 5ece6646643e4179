#!/usr/bin/env bash
# Regenerates patches/ from the commits on top of "pristine" in the work tree,
# after conflicts were resolved there (see docs/rebasing.md).
# --zero-commit and fixed identities keep the diffs of patches/ quiet.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ -d "$tree/.git" ]] || die "no work tree at $tree; run 'make build' first"
[[ -z "$(skipped_patches)" ]] || die "Istio $ISTIO skips patches (build/istio/$ISTIO.skip), so its work tree does not hold the whole queue: rebase on a release that takes every patch (ISTIO=$ISTIO_DEFAULT)"
if [[ -d "$tree/.git/rebase-apply" ]]; then
	die "git am is still in progress in $tree: resolve, 'git add' and 'git am --continue' first"
fi
n=$(git -C "$tree" rev-list --count pristine..HEAD)
[[ $n -gt 0 ]] || die "no commits on top of pristine in $tree; nothing to regenerate"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$tree" format-patch -q --zero-commit -N --no-signature --no-stat -o "$tmp" pristine..HEAD
rm -f "$root"/patches/[0-9][0-9][0-9][0-9]-*.patch
mkdir -p "$root/patches"
cp "$tmp"/*.patch "$root/patches/"
log "regenerated $n patch(es) in patches/:"
ls "$root/patches" >&2
