# Shared helpers for the build scripts: where things live, the pinned Istio
# source, and preparing the patched work tree. Sourced, not executed.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="${WORK_DIR:-$root/_work}"
tree="$work/istio"
out="$root/out"
# Slow builds that outlive a clone (tools, the Docker daemon's images), keyed
# by version inside, so a fresh clone on a warm machine rebuilds nothing.
cache="${PILOT_CONSUL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pilot-consul}"

# shellcheck source=../VERSION
source "$root/VERSION"
# git apply resolves patch paths against the current directory's repo.
cd "$root"

# Git identity and dates are fixed so that applying the queue twice gives the
# same commits, and regenerated patches differ only where the code does.
export GIT_AUTHOR_NAME="pilot-consul build" GIT_AUTHOR_EMAIL="build@pilot-consul.invalid"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
export GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"

log() { echo ">> $*" >&2; }

# docker_build ARGS... is a quiet docker build with the classic builder (the
# daemon may be Debian's 20.10, without BuildKit), minus the deprecation
# notice newer CLIs print for it.
docker_build() {
	DOCKER_BUILDKIT=0 docker build -q "$@" 2>&1 >/dev/null |
		{ grep -v -e DEPRECATED -e 'BuildKit is currently disabled' -e 'environment-variable' -e '^$' >&2 || true; }
}
die() { echo "error: $*" >&2; exit 1; }

# istio_module_dir VERSION prints the extracted (read-only) module source dir.
istio_module_dir() {
	local dir
	dir=$(cd "$root" && go mod download -json "istio.io/istio@$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n "$dir" && -d "$dir" ]] || die "could not download istio.io/istio@$1 through the Go module proxy"
	echo "$dir"
}

# istio_source prints the Istio source to build: ISTIO_SRC if set, else the
# module pinned in VERSION.
istio_source() {
	if [[ -n "${ISTIO_SRC:-}" ]]; then
		[[ -f "$ISTIO_SRC/go.mod" ]] || die "ISTIO_SRC=$ISTIO_SRC is not an Istio source tree (no go.mod)"
		(cd "$ISTIO_SRC" && pwd)
	else
		istio_module_dir "$ISTIO_VERSION"
	fi
}

# patch_files lists the queue in application order.
patch_files() {
	compgen -G "$root/patches/[0-9][0-9][0-9][0-9]-*.patch" | sort || true
}

# hash_of prints one content hash over the given files and directories.
hash_of() {
	find "$@" -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

# init_pristine SRC makes $tree a throwaway git repo whose first commit, tagged
# "pristine", is SRC exactly as upstream ships it.
init_pristine() {
	local src=$1
	log "copying Istio source $src into $tree"
	rm -rf "$tree"
	mkdir -p "$tree"
	# Exclude the source's own .git: a release checkout becomes our base commit as-is.
	(cd "$src" && tar --exclude=./.git -cf - .) | (cd "$tree" && tar -xf -)
	chmod -R u+w "$tree"
	git -C "$tree" init -q -b pristine-base
	git -C "$tree" config core.autocrlf false
	git -C "$tree" config gc.auto 0
	git -C "$tree" add -A -f
	git -C "$tree" commit -q --no-verify -m "pristine Istio source: $src"
	git -C "$tree" tag -f pristine >/dev/null
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
}

# seed_pinned_blobs stores, in the work repo, the files the patches touch as
# they are in the pinned Istio (the base the patches were written against).
# Their blob IDs are the ones in the patches' index lines, so git am --3way
# can build the merge base and leave real conflict markers, even when the
# source is a different Istio release.
seed_pinned_blobs() {
	local pinned f
	pinned=$(istio_module_dir "$ISTIO_VERSION" 2>/dev/null) || return 0
	for f in $(for p in $(patch_files); do git apply --numstat "$p" | cut -f3; done | sort -u); do
		[[ -f "$pinned/$f" ]] && git -C "$tree" hash-object -w "$pinned/$f" >/dev/null
	done
	return 0
}

report_conflict() {
	local p=$1 amlog=$2 n=$3 total=$4 files
	files=$( {
		git -C "$tree" diff --name-only --diff-filter=U 2>/dev/null
		git -C "$tree" apply --check "$p" 2>&1 | sed -n 's/^error: patch failed: \(.*\):[0-9]*$/\1/p'
		sed -n -e 's/^error: patch failed: \(.*\):[0-9]*$/\1/p' \
			-e 's/^error: sha1 information is lacking or useless (\(.*\))\.$/\1/p' \
			-e 's/^error: \(.*\): does not exist in index$/\1/p' \
			-e 's/^CONFLICT ([^)]*): Merge conflict in \(.*\)$/\1/p' <<<"$amlog"
	} | sort -u)
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

# overlay copies our pilot/ tree into the Istio tree, rewriting our module's
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
	done < <(find "$root/pilot" -type f -name '*.go' ! -name '*_test.go' ! -path '*/testdata/*' -print0)
	mv "$manifest.new" "$manifest"
}

# add_consul_client adds github.com/hashicorp/consul/api to the tree's go.mod
# at the version our go.mod pins, verified against our go.sum.
add_consul_client() {
	local v
	v=$(cd "$root" && go list -m -f '{{.Version}}' github.com/hashicorp/consul/api)
	if grep -q "github.com/hashicorp/consul/api $v" "$tree/go.mod"; then
		return 0
	fi
	log "adding github.com/hashicorp/consul/api $v to the Istio tree's go.mod"
	# Our go.sum was resolved against the same Istio plus the Consul client, so
	# it holds every checksum the new requirement pulls in: no checksum DB needed.
	sort -u "$tree/go.sum" "$root/go.sum" -o "$tree/go.sum"
	(cd "$tree" && GOFLAGS=-mod=mod go get "github.com/hashicorp/consul/api@$v" >/dev/null)
}
