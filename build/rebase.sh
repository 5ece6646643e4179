#!/usr/bin/env bash
# Regenerates patches/ from the commits on top of "pristine" in the work tree,
# after conflicts were resolved there (see docs/rebasing.md).
# --zero-commit and fixed identities keep the diffs of patches/ quiet.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ -d "$tree/.git" ]] || die "no work tree at $tree; run 'make build' first"
if [[ -d "$tree/.git/rebase-apply" ]]; then
	die "git am is still in progress in $tree: resolve, 'git add' and 'git am --continue' first"
fi
n=$(git -C "$tree" rev-list --count pristine..HEAD)
[[ $n -gt 0 ]] || die "no commits on top of pristine in $tree; nothing to regenerate"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$tree" format-patch -q --zero-commit -N --no-signature --no-stat -o "$tmp" pristine..HEAD
if [[ -z "$(skipped_patches)" ]]; then
	# The tree holds the whole queue (and any commit added on top): it is the queue.
	rm -f "$root"/patches/[0-9][0-9][0-9][0-9]-*.patch
	mkdir -p "$root/patches"
	cp "$tmp"/*.patch "$root/patches/"
	log "regenerated $n patch(es) in patches/:"
else
	# The release skips patches (build/istio/$ISTIO.skip): each commit
	# regenerates the patch it was applied from, under that patch's name, and
	# the skipped ones stay as they are.
	mapfile -t applied < <(patch_files)
	[[ $n -eq ${#applied[@]} ]] ||
		die "$tree holds $n commits on top of pristine, but Istio $ISTIO applies ${#applied[@]} patches: with skipped patches, regenerate only the ones it applies (add a new patch on a release that takes every patch, or write it by hand)"
	i=0
	for f in $(compgen -G "$tmp/*.patch" | sort); do
		cp "$f" "${applied[i]}"
		i=$((i + 1))
	done
	log "regenerated the $n patch(es) Istio $ISTIO applies; kept those it skips ($(skipped_patches | paste -sd' ')):"
fi
ls "$root/patches" >&2
