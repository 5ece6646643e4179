#!/usr/bin/env bash
# Runs upstream Istio's own unit tests, inside the patched work tree, for
# every package the patch queue touches (derived from the patches, so a new
# patch is covered without editing this script).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ -d "$tree/.git" ]] || die "no patched work tree; run 'make build' first"

pkgs=$(patched_files | grep '\.go$' | xargs -n1 dirname | sort -u | sed 's#^#./#')
log "Istio $ISTIO: upstream tests of the patched packages:" $pkgs
cd "$tree"
go test -count=1 -timeout 20m $pkgs
