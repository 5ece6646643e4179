# Shared helpers for the build scripts: where things live, the pinned Istio
# source, and preparing the patched work tree. Sourced, not executed.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Slow builds that outlive a clone (tools, Istio sources, binaries, the Docker
# daemon's images), keyed by version inside, so a fresh clone on a warm
# machine rebuilds nothing.
cache="${PILOT_CONSUL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pilot-consul}"

# shellcheck source=../VERSION
source "$root/VERSION"
# git apply resolves patch paths against the current directory's repo.
cd "$root"
# The scripts build Istio's and the tools' modules on their own; only our
# module's tests run in the workspace build.sh writes ($work/go.work).
export GOWORK=off

log() { echo ">> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# The Istio release to build: ISTIO=<tag> (make build ISTIO=1.30.3), else
# VERSION's default. Each release has its own work tree and outputs.
ISTIO=${ISTIO:-$ISTIO_DEFAULT}
[[ $ISTIO =~ ^[0-9A-Za-z][0-9A-Za-z._-]*$ ]] || die "ISTIO=$ISTIO is not an Istio release tag"
work="${WORK_DIR:-$root/_work/$ISTIO}"
tree="$work/istio"
out="$root/out/$ISTIO"

# pin FIELD prints VERSION's ISTIO_<tag>_<FIELD> for $ISTIO (COMMIT, TREE).
# A release not in VERSION can be pinned from the environment the same way.
pin() {
	local v="ISTIO_${ISTIO//[.-]/_}_$1"
	echo "${!v:-}"
}

# Git identity and dates are fixed so that applying the queue twice gives the
# same commits, and regenerated patches differ only where the code does.
export GIT_AUTHOR_NAME="pilot-consul build" GIT_AUTHOR_EMAIL="build@pilot-consul.invalid"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
export GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"

# docker_build ARGS... is a quiet docker build with the classic builder (the
# daemon may be Debian's 20.10, without BuildKit), minus the deprecation
# notice newer CLIs print for it.
docker_build() {
	DOCKER_BUILDKIT=0 docker build -q "$@" 2>&1 >/dev/null |
		{ grep -v -e DEPRECATED -e 'BuildKit is currently disabled' -e 'environment-variable' -e '^$' >&2 || true; }
}

# istio_module_dir VERSION prints the extracted (read-only) source of
# istio.io/istio@VERSION from the Go module proxy (development snapshots
# only: the proxy serves no release commit).
istio_module_dir() {
	local dir
	dir=$(cd "$root" && go mod download -json "istio.io/istio@$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n "$dir" && -d "$dir" ]] || die "could not download istio.io/istio@$1 through the Go module proxy"
	echo "$dir"
}

# istio_source prints a directory holding the source of Istio $ISTIO, from
# the first of:
#   1. ISTIO_SRC: a directory (a git checkout of the tag, or unpacked source);
#   2. the cache's unpacked copy from an earlier run;
#   3. ISTIO_SRC_ARCHIVES/istio-<tag>.tar.xz (git archive of the tag, as in
#      ../shared/istio-src), checked by the commit it records, unpacked into
#      the cache;
#   4. a shallow clone of the tag from ISTIO_GIT_URL (default: GitHub).
# init_pristine then checks the tree against VERSION's pin, whatever the source.
istio_source() {
	if [[ -n "${ISTIO_SRC:-}" ]]; then
		[[ -f "$ISTIO_SRC/go.mod" ]] || die "ISTIO_SRC=$ISTIO_SRC is not an Istio source tree (no go.mod)"
		(cd "$ISTIO_SRC" && pwd)
		return
	fi
	local commit dir tmp got
	commit=$(pin COMMIT)
	[[ -n "$commit" ]] || die "Istio $ISTIO is not pinned: VERSION has no ISTIO_${ISTIO//[.-]/_}_COMMIT and _TREE (docs/rebasing.md)"
	dir="$cache/istio-src/istio-$ISTIO-${commit:0:12}"
	if [[ -f "$dir/go.mod" ]]; then
		echo "$dir"
		return
	fi
	tmp="$dir.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp"
	if [[ -n "${ISTIO_SRC_ARCHIVES:-}" ]]; then
		local archive="$ISTIO_SRC_ARCHIVES/istio-$ISTIO.tar.xz"
		[[ -f "$archive" ]] || unfinished "$tmp" "ISTIO_SRC_ARCHIVES=$ISTIO_SRC_ARCHIVES holds no istio-$ISTIO.tar.xz"
		# git archive records the commit in the tar header; reading it stops xz early.
		got=$(xz -dc "$archive" 2>/dev/null | git get-tar-commit-id) || true
		[[ "$got" == "$commit" ]] || unfinished "$tmp" "$archive is commit ${got:-(none recorded)}; VERSION pins Istio $ISTIO at $commit"
		log "unpacking $archive into $dir"
		tar -xJf "$archive" -C "$tmp" --strip-components=1 || unfinished "$tmp" "could not unpack $archive"
	else
		local url=${ISTIO_GIT_URL:-https://github.com/istio/istio.git}
		log "cloning Istio $ISTIO from $url (offline: set ISTIO_SRC_ARCHIVES or ISTIO_SRC, see docs/build.md)"
		git clone -q -c advice.detachedHead=false --depth 1 --branch "$ISTIO" "$url" "$tmp" ||
			unfinished "$tmp" "could not clone tag $ISTIO from $url; offline, point ISTIO_SRC_ARCHIVES at a directory holding istio-$ISTIO.tar.xz"
		got=$(git -C "$tmp" rev-parse HEAD)
		[[ "$got" == "$commit" ]] || unfinished "$tmp" "tag $ISTIO of $url is commit $got; VERSION pins $commit"
		rm -rf "$tmp/.git"
	fi
	mv "$tmp" "$dir"
	echo "$dir"
}

# unfinished DIR MESSAGE removes a half-made DIR and stops.
unfinished() {
	rm -rf "$1"
	die "$2"
}

# patch_files lists the queue in application order.
patch_files() {
	local skip p
	skip=$(skipped_patches)
	for p in $(compgen -G "$root/patches/[0-9][0-9][0-9][0-9]-*.patch" | sort); do
		grep -qxF "$(basename "$p")" <<<"$skip" || echo "$p"
	done
}

# skipped_patches lists the patches release ISTIO does not take, from
# build/istio/<tag>.skip: one "<patch file>  <why>" per line.
skipped_patches() {
	local f="$root/build/istio/$ISTIO.skip"
	[[ -f "$f" ]] || return 0
	sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$f" | awk '{print $1}'
}

# hash_of prints one content hash over the given files and directories.
hash_of() {
	find "$@" -type f -print0 2>/dev/null | hash_files
}

# hash_files hashes the NUL-separated files on stdin by content and by path
# relative to the clone (or work dir), so other clones of the same inputs
# get the same hash and reuse what one of them built.
hash_files() {
	sort -z | xargs -0 sha256sum | sed -e "s#  $work/#  #" -e "s#  $root/#  #" | sha256sum | cut -c1-16
}

# istiod_binaries OUT STAMP KEY "BINARY..." COMPILE... leaves the binaries in
# OUT (their stamp in OUT/.<first binary>.stamp) and prints what it did: "kept" (OUT holds them, built from STAMP), "reused
# <dir>" (another clone built the same inputs: the stamp names the source by
# its git tree, so any source of the same Istio qualifies) or "built"
# (COMPILE DIR wrote them into DIR; they are saved in the cache for others).
istiod_binaries() {
	local out=$1 stamp=$2 key=$3 b saved
	local -a bins
	read -r -a bins <<<"$4"
	shift 4
	mkdir -p "$out"
	saved="$cache/istiod/$key$(echo "$stamp" | sha256sum | cut -c1-16)"
	local stampfile="$out/.${bins[0]}.stamp"
	if [[ "$(cat "$stampfile" 2>/dev/null)" == "$stamp" ]] && all_executable "$out" "${bins[@]}"; then
		echo kept
		return
	fi
	if all_executable "$saved" "${bins[@]}"; then
		for b in "${bins[@]}"; do cp "$saved/$b" "$out/" || return 1; done
		echo "$stamp" >"$stampfile" || return 1
		echo "reused $saved"
		return
	fi
	# Callers read this function's output in $(...), where errexit does not
	# hold: every step checks its own status.
	rm -rf "$out/.build" && mkdir -p "$out/.build" || return 1
	"$@" "$out/.build/" >&2 || return 1
	# Move only complete binaries, so an interrupted build is never mistaken for one.
	mkdir -p "$saved.tmp" || return 1
	for b in "${bins[@]}"; do cp "$out/.build/$b" "$saved.tmp/" || return 1; done
	rm -rf "$saved" && mv "$saved.tmp" "$saved" || return 1
	for b in "${bins[@]}"; do mv "$out/.build/$b" "$out/" || return 1; done
	rmdir "$out/.build" && echo "$stamp" >"$stampfile" || return 1
	echo built
}

all_executable() {
	local dir=$1 b
	shift
	for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# init_pristine SRC makes $tree a throwaway git repo whose first commit, tagged
# "pristine", is SRC exactly as upstream ships it, and checks that it is the
# Istio VERSION pins: a wrong tree stops the build here.
init_pristine() {
	local src=$1 want got head
	want=$(pin TREE)
	[[ -n "$want" ]] || die "Istio $ISTIO is not pinned: VERSION has no ISTIO_${ISTIO//[.-]/_}_TREE (docs/rebasing.md)"
	log "copying Istio source $src into $tree"
	rm -rf "$tree" "$work/source"
	mkdir -p "$tree"
	if [[ -e "$src/.git" ]]; then
		# A checkout: exactly its commit, without build leftovers or local edits.
		head=$(git -C "$src" rev-parse HEAD)
		[[ "$head" == "$(pin COMMIT)" ]] || die "ISTIO_SRC=$src is at commit $head; VERSION pins Istio $ISTIO at $(pin COMMIT)"
		[[ -z "$(git -C "$src" status --porcelain --untracked-files=no)" ]] ||
			log "warning: $src has uncommitted changes; the build uses its commit $head without them"
		git -C "$src" archive HEAD | tar -xf - -C "$tree"
	else
		(cd "$src" && tar -cf - .) | (cd "$tree" && tar -xf -)
	fi
	chmod -R u+w "$tree"
	git -C "$tree" init -q -b pristine-base
	git -C "$tree" config core.autocrlf false
	git -C "$tree" config gc.auto 0
	git -C "$tree" add -A -f
	git -C "$tree" commit -q --no-verify -m "pristine Istio $ISTIO source: $src"
	git -C "$tree" tag -f pristine >/dev/null
	got=$(git -C "$tree" rev-parse 'pristine^{tree}')
	[[ "$got" == "$want" ]] || die "the source in $src is not Istio $ISTIO: its git tree is $got, VERSION pins $want"
	echo "$src" >"$work/source"
}

# apply_queue applies patches/ on top of the pristine commit with git am --3way.
# On a failure it names the patch and the conflicting files, says how to
# continue, leaves the tree for inspection and returns non-zero.
apply_queue() {
	git -C "$tree" am --abort >/dev/null 2>&1 || true
	git -C "$tree" checkout -q -B patched pristine
	git -C "$tree" reset -q --hard pristine
	git -C "$tree" clean -q -fdx
	seed_pinned_blobs
	local p n=0 total
	total=$(patch_files | wc -l)
	while read -r p; do
		[[ -n "$p" ]] || continue
		n=$((n + 1))
		local amlog
		if ! amlog=$(git -C "$tree" am --3way --keep-cr "$p" 2>&1); then
			report_conflict "$p" "$amlog" "$n" "$total"
			return 1
		fi
	done < <(patch_files)
	log "applied $n patch(es) onto $(cat "$work/source")"
	for p in $(skipped_patches); do
		log "not applied to Istio $ISTIO: $p ($(grep -F "$p" "$root/build/istio/$ISTIO.skip" | sed "s/^[^[:space:]]*[[:space:]]*//"))"
	done
}

# seed_pinned_blobs [REPO] stores, in the work repo (or REPO), the files the patches touch as
# they are in the default release (the base the queue is generated on). Their
# blob IDs are the ones in the patches' index lines, so git am --3way can
# build the merge base and leave real conflict markers, even when the source
# is another release. Only a source already in the cache is used.
seed_pinned_blobs() {
	local repo=${1:-$tree} base f
	base=$(compgen -G "$cache/istio-src/istio-$ISTIO_DEFAULT-*/" | head -n1) || return 0
	for f in $(patched_files); do
		[[ -f "$base/$f" ]] && git -C "$repo" hash-object -w "$base/$f" >/dev/null
	done
	return 0
}

# patched_files lists every file the queue touches.
patched_files() {
	for p in $(patch_files); do git apply --numstat "$p" | cut -f3; done | sort -u
}

# conflicting_files REPO PATCH LOG lists the files PATCH failed on in REPO,
# from git's index and from LOG, the output of git am or git apply.
conflicting_files() {
	local repo=$1 p=$2 msg=$3
	{
		git -C "$repo" diff --name-only --diff-filter=U 2>/dev/null
		(cd "$repo" && git apply --check "$p" 2>&1) | sed -n 's/^error: patch failed: \(.*\):[0-9]*$/\1/p'
		sed -n -e 's/^error: patch failed: \(.*\):[0-9]*$/\1/p' \
			-e 's/^error: sha1 information is lacking or useless (\(.*\))\.$/\1/p' \
			-e 's/^error: \(.*\): does not exist in index$/\1/p' \
			-e 's/^U \(.*\)$/\1/p' \
			-e 's/^CONFLICT ([^)]*): Merge conflict in \(.*\)$/\1/p' <<<"$msg"
	} | sort -u
}

report_conflict() {
	local p=$1 amlog=$2 n=$3 total=$4 files
	files=$(conflicting_files "$tree" "$p" "$amlog")
	cat >&2 <<MSG

error: patch $n of $total does not apply: patches/$(basename "$p")
  onto: $(cat "$work/source")
  conflicting files:
$(sed 's/^/    /' <<<"${files:-    (none reported; see git am output below)}")

git am said:
$(sed 's/^/    /' <<<"$amlog")

The work tree is left as it is for you to resolve, in $tree:
    cd $tree
    git status                      # see what is unmerged
    # edit the files above (or re-do the change by hand), then:
    git add <files> && git am --continue
    # or, if 3-way merge had nothing to go on:  git am --skip, edit, git commit
    # repeat until every patch is applied, then regenerate the queue:
    cd $root && make rebase
    make build
MSG
}

# overlay_sources lists (NUL-separated) the code compiled into the Istio
# tree: the registry (pilot/) and consul-mcp (mcp/, cmd/consul-mcp), which
# so builds against each release's own dependency set, as istiod does.
overlay_sources() {
	find "$root/pilot" "$root/mcp" "$root/cmd/consul-mcp" -type f -name '*.go' ! -name '*_test.go' ! -path '*/testdata/*' -print0
}

# overlay copies overlay_sources into the Istio tree, rewriting our module's
# import paths to istio.io/istio, and drops files an earlier overlay added
# that no longer exist. Tests stay in our module: they need our go.mod.
overlay() {
	local manifest="$work/overlay.list" f rel
	if [[ -f "$manifest" ]]; then
		while read -r rel; do
			[[ -f "$root/$rel" ]] || rm -f "$tree/$rel"
		done <"$manifest"
	fi
	: >"$manifest.new"
	while IFS= read -r -d '' f; do
		rel=${f#"$root/"}
		mkdir -p "$tree/$(dirname "$rel")"
		sed 's#"github.com/pilot-consul/pilot-consul/#"istio.io/istio/#' "$f" >"$tree/$rel.tmp"
		if cmp -s "$tree/$rel.tmp" "$tree/$rel"; then rm "$tree/$rel.tmp"; else mv "$tree/$rel.tmp" "$tree/$rel"; fi
		echo "$rel" >>"$manifest.new"
	done < <(overlay_sources)
	mv "$manifest.new" "$manifest"
}

# substitute_deps applies build/istio/<tag>.deps to the tree's go.mod. For
# each pin listed there it asks the module proxy first: a pin that resolves is
# used as upstream has it; only one that does not is replaced by the listed
# substitute, printed here and visible in the binary (go version -m: "=>").
substitute_deps() {
	local file="$root/build/istio/$ISTIO.deps" kind mod pinned subst reason
	if [[ ! -f "$file" ]]; then
		log "no build/istio/$ISTIO.deps: every dependency pin used as upstream has it"
		return 0
	fi
	while read -r kind mod pinned subst; do
		[[ "$kind" == sub ]] || continue
		grep -Eq "^[[:space:]]*(require[[:space:]]+)?${mod//./\\.} ${pinned}([[:space:]]|$)" "$tree/go.mod" ||
			die "build/istio/$ISTIO.deps: Istio $ISTIO's go.mod does not require $mod $pinned (stale line?)"
		reason=$(unresolvable "$mod@$pinned")
		if [[ -z "$reason" ]]; then
			log "dependency pin $mod $pinned resolves: used as upstream pins it"
			(cd "$tree" && go mod edit -dropreplace "$mod@$pinned")
			continue
		fi
		log "SUBSTITUTED $mod $pinned => $subst ($reason; why: build/istio/$ISTIO.deps)"
		(cd "$tree" && go mod edit -replace "$mod@$pinned=$mod@$subst")
		grep -E "^sum ${mod//./\\.} ${subst}(/go\.mod)? " "$file" | cut -c5- >>"$tree/go.sum"
	done <"$file"
	sort -u "$tree/go.sum" -o "$tree/go.sum"
}

# unresolvable MODULE@VERSION prints why the module proxy cannot serve it, or
# nothing when it can. Checked inside the tree, so its go.sum verifies the
# download. Anything but "not served" (a checksum mismatch, a network error)
# stops the build: a substitution is never a fallback for those.
unresolvable() {
	local json err
	json=$(cd "$tree" && go mod download -json "$1" 2>/dev/null) || true
	err=$(sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' <<<"$json" | head -n1)
	if [[ -z "$err" ]]; then
		grep -q '"GoModSum"' <<<"$json" || die "go mod download $1 said neither where nor why:
$json"
		return 0
	fi
	case $err in
	*"checksum mismatch"* | *SECURITY*) die "$1: $err" ;;
	*"403 Forbidden"* | *"404 Not Found"* | *"410 Gone"* | *"not available"* | *"unknown revision"* | *"GOPROXY=off"* | *": reading file://"*"no such file or directory"*)
		err=${err##*server response: }
		echo "${err%.}" | head -c 200 ;;
	*) die "cannot tell whether the module proxy serves $1: $err" ;;
	esac
}

# add_consul_client adds github.com/hashicorp/consul/api to the tree's go.mod
# at the version our go.mod pins, verified against our go.sum, and prints
# which of upstream's requirements that raised (minimal version selection).
add_consul_client() {
	local v
	v=$(cd "$root" && go list -m -f '{{.Version}}' github.com/hashicorp/consul/api)
	if grep -q "github.com/hashicorp/consul/api $v" "$tree/go.mod"; then
		return 0
	fi
	log "adding github.com/hashicorp/consul/api $v to the Istio tree's go.mod"
	# Our go.sum holds the checksums of the Consul client's dependencies: no
	# checksum database needed.
	sort -u "$tree/go.sum" "$root/go.sum" -o "$tree/go.sum"
	cp "$tree/go.mod" "$work/go.mod.before-consul"
	(cd "$tree" && GOFLAGS=-mod=mod go get "github.com/hashicorp/consul/api@$v" 2>&1 >/dev/null | grep -v '^go: \(added\|upgraded\|downloading\)' >&2 || true)
	grep -q "github.com/hashicorp/consul/api $v" "$tree/go.mod" || die "go get github.com/hashicorp/consul/api@$v failed in $tree"
	requirement_changes "$work/go.mod.before-consul" "$tree/go.mod"
}

# requirement_changes BEFORE AFTER prints the requirements AFTER (a go.mod)
# added or raised over BEFORE.
requirement_changes() {
	LC_ALL=C join -a2 <(go_requires "$1") <(go_requires "$2") |
		awk 'NF == 2 { print "   added " $1 " " $2 } NF == 3 && $2 != $3 { print "   raised " $1 " " $2 " -> " $3 }' >&2
}

# go_requires GOMOD prints its requirements, one "module version" per line.
go_requires() {
	sed -n -e 's/^require \([^ (]*\) \([^ ]*\).*/\1 \2/p' -e '/^require (/,/^)/s/^[[:space:]]*\([^ ]*\) \([^ ]*\).*/\1 \2/p' "$1" |
		grep -v '^)' | LC_ALL=C sort
}

# write_workspace writes $work/go.work: our module with istio.io/istio
# replaced by the patched tree and the tree's substitutions repeated (a
# dependency's replace lines do not count), and go.work.sum from both go.sums.
# make's test targets run our module's tests in it (GOWORK), so the registry
# is tested against the same Istio packages and versions istiod is built from.
write_workspace() {
	local go_line
	# A workspace's go line must be at least each module's.
	go_line=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$tree/go.mod" "$root/go.mod" | sort -V | tail -n1)
	{
		echo "// Written by build/build.sh for Istio $ISTIO; make's test targets use it (GOWORK)."
		echo "go $go_line"
		echo
		echo "use $root"
		echo
		echo "replace istio.io/istio => $tree"
		sed -n 's/^replace \(.*\)$/replace \1/p' "$tree/go.mod"
	} >"$work/go.work.tmp"
	mv "$work/go.work.tmp" "$work/go.work"
	sort -u "$tree/go.sum" "$root/go.sum" -o "$work/go.work.sum"
}
