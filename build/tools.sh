#!/usr/bin/env bash
# Builds the real servers the tests and the demo run (Consul, kube-apiserver)
# into bin/, and installs etcd from Debian when it is missing. Each tool is
# built once and reused; a tool already present is left alone. kind is built
# only on request (make e2e-kind): the local suites do not use it.
#
# usage: build/tools.sh [consul|kube-apiserver|etcd|kind|all]...
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"

build_go_tool() { # name, wrapper module dir, package
	local name=$1 dir=$2 pkg=$3
	if [[ -x "$bin/$name" ]]; then
		return 0
	fi
	echo ">> building $name from its Go module (first run only, takes a few minutes)" >&2
	local start=$SECONDS
	(cd "$root/build/tools/$dir" && CGO_ENABLED=0 go build -o "$bin/$name.tmp" "$pkg")
	# Rename only once complete, so an interrupted build is never mistaken for a tool.
	mv "$bin/$name.tmp" "$bin/$name"
	echo ">> built bin/$name in $((SECONDS - start))s" >&2
}

install_etcd() {
	if command -v etcd >/dev/null 2>&1 || [[ -x "$bin/etcd" ]]; then
		return 0
	fi
	echo ">> installing etcd (Debian package etcd-server)" >&2
	local sudo=""
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
	# The package starts a system etcd on the default ports; tests run their own.
	$sudo systemctl disable --now etcd >/dev/null 2>&1 || true
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(all)
for t in "${targets[@]}"; do
	case $t in
	consul) build_go_tool consul consul github.com/hashicorp/consul ;;
	kube-apiserver) build_go_tool kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver ;;
	etcd) install_etcd ;;
	kind) build_go_tool kind kind sigs.k8s.io/kind ;;
	all)
		install_etcd
		build_go_tool consul consul github.com/hashicorp/consul
		build_go_tool kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
		;;
	*) echo "unknown tool $t (want consul, kube-apiserver, etcd, kind or all)" >&2; exit 2 ;;
	esac
done
