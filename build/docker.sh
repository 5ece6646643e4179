#!/usr/bin/env bash
# Builds (or pushes) the istiod image: FROM the upstream pilot image named in
# VERSION (ISTIO_BASE_IMAGE; override with BASE_IMAGE=...), with
# out/pilot-discovery replacing upstream's binary.
#
# usage: build/docker.sh build|push IMAGE
set -euo pipefail
source "$(dirname "$0")/lib.sh"
action=${1:?usage: docker.sh build|push IMAGE}
image=${2:?usage: docker.sh build|push IMAGE}

if ! docker info >/dev/null 2>&1; then
	die "no Docker daemon reachable ('docker info' failed). 'make docker' needs one: run it on a Docker host.
  out/pilot-discovery is built; the recipe is build/docker/Dockerfile (FROM ${BASE_IMAGE:-$ISTIO_BASE_IMAGE})."
fi
case $action in
build)
	ctx=$(mktemp -d)
	trap 'rm -rf "$ctx"' EXIT
	cp "$root/build/docker/Dockerfile" "$out/pilot-discovery" "$ctx/"
	docker build --build-arg "BASE_IMAGE=${BASE_IMAGE:-$ISTIO_BASE_IMAGE}" \
		--label "org.opencontainers.image.version=$PILOT_CONSUL_VERSION" \
		--label "io.pilot-consul.istio-base=istio.io/istio@$ISTIO_VERSION" \
		-t "$image" "$ctx"
	log "built $image"
	;;
push) docker push "$image" ;;
*) die "unknown action $action (want build or push)" ;;
esac
