#!/usr/bin/env bash
# Builds (or pushes) the images of a release, with no registry access:
#   HUB/pilot:TAG    istiod: our pilot-discovery of Istio $ISTIO
#                    (build/docker/Dockerfile.pilot); it pairs with upstream's
#                    proxyv2:<release> sidecars and istioctl of the same release
#   HUB/proxyv2:TAG  pilot-agent for proxyless gRPC pods (Dockerfile.proxyv2)
#   HUB/consul-mcp:TAG  consul-mcp, the registry over MCP-over-xDS for an
#                    unpatched istiod (Dockerfile.consul-mcp, docs/mcp.md)
# All start FROM VERSION's IMAGE_BASE (scratch) with a small root filesystem
# made here (CA bundle, users, /tmp); the kind tier tests exactly these images.
# "upstream" builds HUB/pilot:TAG from the release's istiod as shipped
# (make build-upstream) instead: the kind tier's unpatched istiod, built
# here because nothing can be pulled.
#
# usage: build/docker.sh build|push|upstream HUB TAG
set -euo pipefail
source "$(dirname "$0")/lib.sh"
action=${1:?usage: docker.sh build|push|upstream HUB TAG}
hub=${2:?usage: docker.sh build|push|upstream HUB TAG}
tag=${3:?usage: docker.sh build|push|upstream HUB TAG}

if ! docker info >/dev/null 2>&1; then
	die "no Docker daemon reachable ('docker info' failed). 'make docker' needs one:
  start Docker, or (as root on Debian/Ubuntu) eval \"\$(build/docker-up.sh)\" first."
fi

# rootfs DIR: the userland both images share.
rootfs() {
	local fs=$1/rootfs
	mkdir -p "$fs/etc/ssl/certs" "$fs/tmp" "$fs/var/lib/istio/data" "$fs/etc/istio/proxy"
	chmod 1777 "$fs/tmp"
	chown -R 1337:1337 "$fs/var/lib/istio" "$fs/etc/istio"
	[[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "no /etc/ssl/certs/ca-certificates.crt: install Debian's ca-certificates"
	cp /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nistio-proxy:x:1337:1337:istio-proxy:/tmp:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$fs/etc/passwd"
	printf 'root:x:0:\nistio-proxy:x:1337:\nnogroup:x:65534:\n' >"$fs/etc/group"
}

# image NAME DOCKERFILE VERSION FILE...: builds HUB/NAME:TAG from the
# Dockerfile and files, on the shared root filesystem, labelled alike.
ctxs=()
trap 'rm -rf "${ctxs[@]}"' EXIT
image() {
	local name=$1 dockerfile=$2 version=$3 ctx
	shift 3
	ctx=$(mktemp -d)
	ctxs+=("$ctx")
	rootfs "$ctx"
	cp "$root/build/docker/$dockerfile" "$ctx/Dockerfile"
	cp "$@" "$ctx/"
	docker_build \
		--build-arg "BASE=$IMAGE_BASE" \
		--label "org.opencontainers.image.version=$version" \
		--label "io.pilot-consul.istio-release=$ISTIO" \
		--label "io.pilot-consul.istio-commit=$(pin COMMIT)" \
		-t "$hub/$name:$tag" "$ctx"
	log "built $hub/$name:$tag"
}

version="$ISTIO+pilot-consul-$PILOT_CONSUL_VERSION"
case $action in
build)
	"$root/build/build.sh"
	image pilot Dockerfile.pilot "$version" "$out/pilot-discovery"
	image proxyv2 Dockerfile.proxyv2 "$version" "$out/pilot-agent" "$tree/tools/packaging/common/envoy_bootstrap.json"
	image consul-mcp Dockerfile.consul-mcp "$version" "$out/consul-mcp"
	;;
upstream)
	"$root/build/build-upstream.sh"
	image pilot Dockerfile.pilot "$ISTIO" "$root/out/$ISTIO-upstream/pilot-discovery"
	;;
push) for img in pilot proxyv2 consul-mcp; do docker push "$hub/$img:$tag"; done ;;
*) die "unknown action $action (want build, push or upstream)" ;;
esac
