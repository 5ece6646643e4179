#!/usr/bin/env bash
# Runs upstream Istio's own unit tests, inside the patched work tree, for
# every package the patch queue touches (derived from the patches, so a new
# patch is covered without editing this script).
#
# A test that fails is run once more, alone, before the tier fails: some of
# upstream's tests race their own 25 ms debounce on a loaded 2-core machine
# (TestWorkload/ondemand in pilot/pkg/xds failed CI on 1.31.0-rc.0 and passes
# 30 runs in a row idle; Istio tracks the kind in its "flaky test" issues).
# The rerun is printed as such; a test that fails twice, a package that does
# not build, panics or leaks goroutines (no test named) fails the tier.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ -d "$tree/.git" ]] || die "no patched work tree; run 'make build' first"

pkgs=$(patched_files | grep '\.go$' | xargs -n1 dirname | sort -u | sed 's#^#./#')
log "Istio $ISTIO: upstream tests of the patched packages:" $pkgs
cd "$tree"
# -trimpath, as pilot-discovery is built: the tests then reuse its compiled
# packages (a cold run compiles only what the tests add: about 200 s a
# release instead of 390). REPO_ROOT keeps upstream's env.IstioSrc, which
# -trimpath would otherwise take from a trimmed source path.
export REPO_ROOT=$PWD
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if go test -trimpath -count=1 -timeout 20m $pkgs 2>&1 | tee "$out"; then
	exit 0
fi
# Without -v, go test prints each package's output as one block, ending in
# "FAIL<tab><package>": the top-level "--- FAIL: TestX" lines before it are
# that package's.
reruns=$(awk '
	/^--- FAIL: / { tests = tests (tests ? "|" : "") $3; next }
	/^FAIL\t/ { print $2 "\t" tests; tests = ""; next }
	/^ok  \t/ { tests = "" }
' "$out")
[[ -n "$reruns" ]] || die "Istio $ISTIO: upstream tests failed"
status=0
while IFS=$'\t' read -r pkg tests; do
	if [[ -z "$tests" ]]; then
		log "Istio $ISTIO: $pkg failed without a failing test to rerun (build, panic, timeout or leak)"
		status=1
		continue
	fi
	log "Istio $ISTIO: RERUN of upstream tests that failed once in $pkg: $tests"
	if ! go test -trimpath -count=1 -timeout 10m -run "^($tests)\$" "$pkg"; then
		log "Istio $ISTIO: $tests in $pkg failed again"
		status=1
	fi
done <<<"$reruns"
[[ $status -eq 0 ]] || die "Istio $ISTIO: upstream tests failed"
log "Istio $ISTIO: upstream tests passed, with the reruns above"
