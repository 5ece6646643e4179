#!/usr/bin/env bash
# Renders the install overlay build/install/istio-operator.yaml with the
# patched tree's own istioctl into out/manifests/istio.yaml. HUB and TAG name
# our image (as for `make docker`). (tests/install renders the Helm values,
# build/install/values.yaml, with the chart's own renderer.)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$root/build/build.sh" # the patched tree, with the Consul provider ID istioctl validates against

stamp="$(go version) $(cat "$work/source") $(cat "$work/patches.stamp")"
saved="$cache/istioctl/$(echo "$stamp" | sha256sum | cut -c1-16)"
if [[ -z "${ISTIO_SRC:-}" && -x "$saved/istioctl" && "$(cat "$out/.istioctl.stamp" 2>/dev/null)" != "$stamp" ]]; then
	cp "$saved/istioctl" "$out/istioctl"
	echo "$stamp" >"$out/.istioctl.stamp"
	log "out/istioctl reused from $saved"
fi
if [[ ! -x "$out/istioctl" || "$(cat "$out/.istioctl.stamp" 2>/dev/null)" != "$stamp" ]]; then
	log "compiling the patched tree's istioctl (cold: a few minutes)"
	start=$SECONDS
	(cd "$tree" && CGO_ENABLED=0 go build -o "$out/istioctl.tmp" ./istioctl/cmd/istioctl)
	mv "$out/istioctl.tmp" "$out/istioctl"
	echo "$stamp" >"$out/.istioctl.stamp"
	if [[ -z "${ISTIO_SRC:-}" ]]; then mkdir -p "$saved" && cp "$out/istioctl" "$saved/"; fi
	log "built out/istioctl in $((SECONDS - start))s"
fi

image="${HUB:-localhost:5000/pilot-consul}/pilot:${TAG:-$PILOT_CONSUL_VERSION}"
mkdir -p "$out/manifests"
"$out/istioctl" manifest generate -f "$root/build/install/istio-operator.yaml" \
	--set "values.pilot.image=$image" >"$out/manifests/istio.yaml"

log "rendered out/manifests/istio.yaml (image $image)"
