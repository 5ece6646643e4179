#!/usr/bin/env bash
# Builds the real servers the tests and the demo run, from their Go modules
# (wrapper modules in build/tools/), and installs etcd from Debian for the
# local tier. Builds land in the cache outside the clone, one directory per
# wrapper module version (its go.mod and go.sum) and Go version, and bin/
# links to them: a fresh clone on a warm machine rebuilds nothing.
#
# usage: build/tools.sh [TOOL|all]...
#   consul, kube-apiserver, etcd (Debian's, local tier), kind,
#   kube-node (kubelet, kubeadm, kubectl, kube-proxy, kube-controller-manager,
#   kube-scheduler, kube-apiserver: version-stamped, for the kind node image),
#   etcd-server (etcd built at kubeadm's version), coredns, promtool
#   (Prometheus's rule checker, for the alerting rules' tests: taken from
#   Debian's prometheus package, not installed), helm,
#   all (what the local tier needs: etcd, consul, kube-apiserver)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin="$root/bin"
mkdir -p "$bin"

# tool_dir MODULE prints the cache directory of a wrapper module's build.
tool_dir() {
	local mod=$1
	echo "$cache/tools/$mod-$(cd "$root/build/tools/$mod" && { cat go.mod go.sum; go version; } | sha256sum | cut -c1-12)"
}

# build_go MODULE LDFLAGS [NAME=]PACKAGE... builds the packages of a wrapper
# module in one go build (they share the compile) into its cache directory,
# and links each binary into bin/ under NAME (default: go build's name).
build_go() {
	local mod=$1 ldflags=$2
	shift 2
	local dir names=() built=() pkgs=() p missing=0
	dir=$(tool_dir "$mod")
	for p in "$@"; do
		pkgs+=("${p#*=}")
		# go build names a binary after the last path element that is not a major version.
		built+=("$(basename "$(sed -E 's#/v[0-9]+$##' <<<"${p#*=}")")")
		if [[ $p == *=* ]]; then names+=("${p%%=*}"); else names+=("${built[-1]}"); fi
		[[ -x "$dir/${names[-1]}" ]] || missing=1
	done
	if ((missing)); then
		log "building ${names[*]} from their Go module (first run only, takes a few minutes)"
		local start=$SECONDS tmp i
		tmp=$(mktemp -d "$cache/tools/.build-XXXXXX")
		(cd "$root/build/tools/$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
		mkdir -p "$dir"
		# Move only complete binaries, so an interrupted build is never mistaken for a tool.
		for i in "${!names[@]}"; do mv "$tmp/${built[$i]}" "$dir/${names[$i]}"; done
		rm -rf "$tmp"
		log "built ${names[*]} in $((SECONDS - start))s into $dir"
	fi
	for p in "${names[@]}"; do ln -sfn "$dir/$p" "$bin/$p"; done
}

# Kubernetes binaries report the version they were built from: kubeadm and
# istioctl check it, and without these every binary says v0.0.0.
kube_ldflags() {
	local v major minor pkg flags=""
	v=$(cd "$root/build/tools/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
	major=${v#v}; major=${major%%.*}
	minor=${v#v"$major".}; minor=${minor%%.*}
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	echo "-s -w$flags"
}

# helm reports its release, and renders charts for the Kubernetes minor the
# project runs (helm template's default would be 1.20).
helm_ldflags() {
	local v
	v=$(cd "$root/build/tools/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)
	echo "-s -w -X helm.sh/helm/v3/internal/version.version=$v" \
		"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=35"
}

install_etcd() {
	if command -v etcd >/dev/null 2>&1; then
		return 0
	fi
	log "installing etcd (Debian package etcd-server)"
	local sudo=""
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	apt_update
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
	# The package starts a system etcd on the default ports; tests run their own.
	$sudo systemctl disable --now etcd >/dev/null 2>&1 || true
}

# apt_update refreshes the package lists once per run of this script.
apt_update() {
	[[ -z ${apt_updated:-} ]] || return 0
	local sudo=""
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	$sudo apt-get update -qq
	apt_updated=1
}

# install_promtool takes promtool out of Debian's prometheus package, into
# the cache by package version: the package itself would install and
# start a Prometheus server, and building promtool from Prometheus's Go
# module took 6.5 minutes of a cold CI run.
install_promtool() {
	local version dir tmp
	version=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [[ -z $version || $version == "(none)" ]]; then
		apt_update
		version=$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')
	fi
	[[ -n $version && $version != "(none)" ]] || die "Debian has no prometheus package (for promtool)"
	dir="$cache/tools/promtool-${version//[^A-Za-z0-9.+-]/_}"
	if [[ ! -x "$dir/promtool" ]]; then
		log "taking promtool from Debian's prometheus $version (first run only)"
		tmp=$(mktemp -d "$cache/tools/.build-XXXXXX")
		(cd "$tmp" && apt-get download -qq "prometheus=$version" 2>/dev/null || { apt_update && apt-get download -qq "prometheus=$version"; }) ||
			die "could not download Debian's prometheus $version"
		dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
		mkdir -p "$dir"
		mv "$tmp/x/usr/bin/promtool" "$dir/promtool"
		rm -rf "$tmp"
	fi
	ln -sfn "$dir/promtool" "$bin/promtool"
}

mkdir -p "$cache/tools"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(all)
for t in "${targets[@]}"; do
	case $t in
	consul) build_go consul "-s -w" github.com/hashicorp/consul ;;
	kube-apiserver) build_go kubernetes "$(kube_ldflags)" k8s.io/kubernetes/cmd/kube-apiserver ;;
	kube-node)
		build_go kubernetes "$(kube_ldflags)" k8s.io/kubernetes/cmd/kube-apiserver \
			k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubectl \
			k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-controller-manager \
			k8s.io/kubernetes/cmd/kube-scheduler
		;;
	etcd) install_etcd ;;
	etcd-server) build_go etcd "-s -w" etcd=go.etcd.io/etcd/server/v3 ;;
	coredns) build_go coredns "-s -w" github.com/pilot-consul/pilot-consul/build/tools/coredns ;;
	kind) build_go kind "-s -w" sigs.k8s.io/kind ;;
	promtool) install_promtool ;;
	helm) build_go helm "$(helm_ldflags)" helm.sh/helm/v3/cmd/helm ;;
	all)
		install_etcd
		build_go consul "-s -w" github.com/hashicorp/consul
		build_go kubernetes "$(kube_ldflags)" k8s.io/kubernetes/cmd/kube-apiserver
		;;
	*) die "unknown tool $t (see the usage at the top of build/tools.sh)" ;;
	esac
done
