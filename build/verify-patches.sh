#!/usr/bin/env bash
# Checks the patch queue (STYLE.md: eks-distro / ungoogled-chromium):
#  - every file in patches/ is a numbered NNNN-subject.patch, numbers unique
#    and contiguous from 0001 (anything else would be silently unused);
#  - each patch parses, changes something, and carries the header fields
#    "What:", "Why not upstream:" and "Drop when:";
#  - the queue applies, in order and as the build applies it (3-way), to both
#    releases VERSION names (without the patches a release's
#    build/istio/<tag>.skip lists) and to the newer upstream sources in
#    ISTIO_VERIFY_MODULES (apply-only); a failure names the version, the
#    patch and the conflicting files;
#  - a skip file names only patches that exist, each with a reason.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

errors=0
bad() { echo "verify-patches: $*" >&2; errors=$((errors + 1)); }

shopt -s nullglob
expect=1
for f in "$root"/patches/*; do
	b=$(basename "$f")
	if [[ ! $b =~ ^([0-9]{4})-[A-Za-z0-9._-]+\.patch$ ]]; then
		bad "$b: not a numbered NNNN-subject.patch; the build would never apply it"
		continue
	fi
	n=$((10#${BASH_REMATCH[1]}))
	if [[ $n -ne $expect ]]; then
		bad "$b: number $n out of sequence (expected $(printf %04d $expect)); duplicate or gap"
	fi
	expect=$((n + 1))
	if ! git apply --stat "$f" >/dev/null 2>&1; then
		bad "$b: does not parse as a patch"
		continue
	fi
	if [[ -z "$(git apply --numstat "$f" 2>/dev/null)" ]]; then
		bad "$b: changes nothing (unused)"
	fi
	for field in "What:" "Why not upstream:" "Drop when:"; do
		sed '/^diff --git/,$d' "$f" | grep -q "^$field" || bad "$b: header lacks \"$field\""
	done
done
[[ $expect -gt 1 ]] || bad "patches/ holds no patches"
dups=$(for f in $(patch_files); do git patch-id --stable <"$f"; done | awk '{print $1}' | sort | uniq -d)
[[ -z "$dups" ]] || bad "two patches make the same change (git patch-id $dups)"

for f in "$root"/build/istio/*.skip; do
	while read -r p why; do
		[[ -z "$p" || "$p" == \#* ]] && continue
		[[ -f "$root/patches/$p" ]] || bad "$(basename "$f"): $p is not in patches/ (stale line)"
		[[ -n "$why" ]] || bad "$(basename "$f"): $p has no reason"
	done <"$f"
done

# apply_check SRC LABEL applies the queue (ISTIO's) in order, with git apply --3way as
# the build's git am does, to a scratch repo of only the files it touches
# (fast), with the default release's versions as merge bases.
apply_check() {
	local src=$1 label=$2 tmp f p msg
	tmp=$(mktemp -d)
	git -C "$tmp" init -q
	for f in $(patched_files); do
		if [[ -f "$src/$f" ]]; then
			mkdir -p "$tmp/$(dirname "$f")"
			cp "$src/$f" "$tmp/$f"
			chmod u+w "$tmp/$f"
		fi
	done
	git -C "$tmp" add -A
	seed_pinned_blobs "$tmp"
	local ok=1
	for p in $(patch_files); do
		if ! msg=$(cd "$tmp" && git apply --3way --index "$p" 2>&1); then
			bad "$(basename "$p") does not apply to $label; conflicting files: $(conflicting_files "$tmp" "$p" "$msg" | paste -sd' ')
$(sed 's/^/    /' <<<"$msg")"
			ok=0
			break
		fi
	done
	rm -rf "$tmp"
	local skipped
	skipped=$(skipped_patches | paste -sd' ')
	[[ $ok -eq 0 ]] || echo "verify-patches: queue applies to $label${skipped:+ (without $skipped, see build/istio/$ISTIO.skip)}" >&2
}

if [[ $errors -eq 0 ]]; then
	for v in "$ISTIO_DEFAULT" "$ISTIO_PREVIOUS"; do
		ISTIO=$v apply_check "$(ISTIO=$v ISTIO_SRC='' istio_source)" "Istio $v"
	done
	# An entry VERSION@RELEASE is checked without the patches RELEASE skips
	# (a release branch's newer source); a bare VERSION as the default.
	for v in $ISTIO_VERIFY_MODULES; do
		rel=$ISTIO_DEFAULT
		if [[ $v == *@* ]]; then rel=${v#*@} v=${v%@*}; fi
		ISTIO=$rel apply_check "$(istio_module_dir "$v")" "istio.io/istio@$v"
	done
fi
if [[ $errors -gt 0 ]]; then
	echo "verify-patches: $errors problem(s)" >&2
	exit 1
fi
echo "verify-patches: OK ($((expect - 1)) patches)" >&2
