#!/usr/bin/env bash
# Runs make targets one after another, as the tiers of `make test`, and
# prints each one's wall time at the end, also when one fails (then the
# rest do not run): a tier that got slower shows in every CI log.
#   build/tiers.sh TARGET...
set -uo pipefail
cd "$(dirname "$0")/.."

names=() times=() results=()
summary() {
	local total=0 i
	echo
	echo "== make test: wall time per tier =="
	for i in "${!names[@]}"; do
		printf '  %-18s %6ss  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
		total=$((total + times[i]))
	done
	printf '  %-18s %6ss\n' "total" "$total"
	local consul=${CONSUL_BIN:-bin/consul}
	[[ -x $consul ]] && echo "  against $("$consul" version | head -1) ($consul)"
	return 0
}

status=0
for target in "$@"; do
	start=$SECONDS
	if make --no-print-directory "$target"; then
		result=passed
	else
		result=FAILED status=1
	fi
	names+=("$target") times+=($((SECONDS - start))) results+=("$result")
	[[ $status -eq 0 ]] || break
done
summary
exit $status
