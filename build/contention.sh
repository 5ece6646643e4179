#!/usr/bin/env bash
# Runs a command N times in a row while one busy loop per core competes
# for the CPU, as on a loaded CI machine; stops at the first failure. The
# loops are this script's own children, stopped by PID on every exit.
#   build/contention.sh N COMMAND...
set -euo pipefail
runs=$1
shift
loops=()
stop_loops() {
	local pid
	for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_loops EXIT
for _ in $(seq "$(nproc)"); do
	bash -c 'while :; do :; done' &
	loops+=($!)
done
echo ">> $(nproc) busy loops (PIDs ${loops[*]}) compete for the cores"
for i in $(seq "$runs"); do
	start=$SECONDS
	echo ">> run $i of $runs: $*"
	if ! "$@"; then
		echo ">> run $i of $runs FAILED after $((SECONDS - start))s"
		exit 1
	fi
	echo ">> run $i of $runs passed in $((SECONDS - start))s"
done
echo ">> $runs of $runs runs passed under contention"
