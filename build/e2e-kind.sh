#!/usr/bin/env bash
# Runs the kind suite (tests/e2e/kind): builds our istiod image and the
# e2e-echo workload image, then the Go suite creates a kind cluster, loads
# them, deploys Consul, installs Istio with build/install/istio-operator.yaml
# and runs the cases shared with the local suite (tests/e2e). Needs a Docker
# daemon and network access (kind node, Consul and Istio proxy images).
#
# usage: build/e2e-kind.sh   (make e2e-kind; KEEP=1 leaves the cluster up)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# Refuse before building anything where kind cannot run.
if ! command -v docker >/dev/null 2>&1; then
	die "make e2e-kind needs Docker: no docker client on PATH. On this machine 'make test' runs the same cases against the local mesh."
fi
if ! docker info >/dev/null 2>&1; then
	die "make e2e-kind needs a Docker daemon ('docker info' failed). Run it on a Docker host; on this machine 'make test' runs the same cases against the local mesh."
fi

hub=${E2E_HUB:-localhost/pilot-consul}
tag=${E2E_TAG:-e2e}
pilot_image="$hub/pilot:$tag"
echo_image="$hub/e2e-echo:$tag"
# The sidecar is the upstream proxy of the release our image is built FROM.
base_image=${BASE_IMAGE:-$ISTIO_BASE_IMAGE}
proxy_hub=${E2E_PROXY_HUB:-${base_image%/*}}
proxy_tag=${E2E_PROXY_TAG:-${base_image##*:}}

"$root/build/tools.sh" kind
HUB="$hub" TAG="$tag" "$root/build/manifests.sh" # pilot-discovery and istioctl of the patched tree
"$root/build/docker.sh" build "$pilot_image"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
CGO_ENABLED=0 go build -o "$ctx/e2e-echo" ./tests/cmd/e2e-echo
cp "$root/tests/e2e/kind/echo.Dockerfile" "$ctx/Dockerfile"
docker build -t "$echo_image" "$ctx"

E2E_PILOT_IMAGE="$pilot_image" E2E_ECHO_IMAGE="$echo_image" \
	E2E_PROXY_HUB="$proxy_hub" E2E_PROXY_TAG="$proxy_tag" \
	go test -tags e2ekind -count=1 -v -timeout 45m ./tests/e2e/kind/
