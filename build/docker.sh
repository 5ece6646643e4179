#!/usr/bin/env bash
# Builds (or pushes) the images of a release, with no registry access:
#   HUB/pilot:TAG    istiod: our pilot-discovery of Istio $ISTIO
#                    (build/docker/Dockerfile.pilot); it pairs with upstream's
#                    proxyv2:<release> sidecars and istioctl of the same release
#   HUB/proxyv2:TAG  pilot-agent for proxyless gRPC pods (Dockerfile.proxyv2)
# Both start FROM VERSION's IMAGE_BASE (scratch) with a small root filesystem
# made here (CA bundle, users, /tmp); the kind tier tests exactly these images.
#
# usage: build/docker.sh build|push HUB TAG
set -euo pipefail
source "$(dirname "$0")/lib.sh"
action=${1:?usage: docker.sh build|push HUB TAG}
hub=${2:?usage: docker.sh build|push HUB TAG}
tag=${3:?usage: docker.sh build|push HUB TAG}

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

case $action in
build)
	"$root/build/build.sh"
	ctx=$(mktemp -d)
	trap 'rm -rf "$ctx"' EXIT
	for img in pilot proxyv2; do
		mkdir -p "$ctx/$img"
		rootfs "$ctx/$img"
		cp "$root/build/docker/Dockerfile.$img" "$ctx/$img/Dockerfile"
	done
	cp "$out/pilot-discovery" "$ctx/pilot/"
	cp "$out/pilot-agent" "$tree/tools/packaging/common/envoy_bootstrap.json" "$ctx/proxyv2/"
	for img in pilot proxyv2; do
		docker_build \
			--build-arg "BASE=$IMAGE_BASE" \
			--label "org.opencontainers.image.version=$ISTIO+pilot-consul-$PILOT_CONSUL_VERSION" \
			--label "io.pilot-consul.istio-release=$ISTIO" \
			--label "io.pilot-consul.istio-commit=$(pin COMMIT)" \
			-t "$hub/$img:$tag" "$ctx/$img"
		log "built $hub/$img:$tag"
	done
	;;
push) for img in pilot proxyv2; do docker push "$hub/$img:$tag"; done ;;
*) die "unknown action $action (want build or push)" ;;
esac
