#!/usr/bin/env bash
# Renders the install overlay build/install/istio-operator.yaml with the
# patched tree's own istioctl into out/<tag>/manifests/istio.yaml (and links
# out/istioctl to out/<tag>/istioctl). HUB and TAG name our image (as for
# `make docker`). (tests/install renders the Helm values,
# build/install/values.yaml, with the chart's own renderer.)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$root/build/build.sh" # the patched tree, with the Consul provider ID istioctl validates against

# Only the Istio source and the patches go into istioctl, not our pilot/.
stamp="$(go version) $ISTIO stamped $(git -C "$tree" rev-parse 'pristine^{tree}') $(cat "$work/patches.stamp") $(hash_of "$tree/go.mod" "$tree/go.sum")"
saved="$cache/istioctl/$(echo "$stamp" | sha256sum | cut -c1-16)"
if [[ -x "$saved/istioctl" && "$(cat "$out/.istioctl.stamp" 2>/dev/null)" != "$stamp" ]]; then
	cp "$saved/istioctl" "$out/istioctl"
	echo "$stamp" >"$out/.istioctl.stamp"
	log "out/$ISTIO/istioctl reused from $saved"
fi
if [[ ! -x "$out/istioctl" || "$(cat "$out/.istioctl.stamp" 2>/dev/null)" != "$stamp" ]]; then
	log "compiling the patched tree's istioctl (cold: a few minutes)"
	start=$SECONDS
	pkgver=istio.io/istio/pkg/version
	# Stamped as upstream's istioctl of the release: it writes its version into
	# resource labels (operator.istio.io/version), where "+" is not allowed,
	# and it is upstream's code (the patches touch only pilot-discovery).
	(cd "$tree" && CGO_ENABLED=0 go build -o "$out/istioctl.tmp" \
		-ldflags "-s -w -X $pkgver.buildVersion=$ISTIO -X $pkgver.buildGitRevision=$(pin COMMIT) -X $pkgver.buildTag=$ISTIO -X $pkgver.buildStatus=Clean" \
		./istioctl/cmd/istioctl)
	mv "$out/istioctl.tmp" "$out/istioctl"
	echo "$stamp" >"$out/.istioctl.stamp"
	mkdir -p "$saved" && cp "$out/istioctl" "$saved/"
	log "built out/$ISTIO/istioctl in $((SECONDS - start))s"
fi
ln -sfn "$ISTIO/istioctl" "$root/out/istioctl"

image="${HUB:-localhost:5000/pilot-consul}/pilot:${TAG:-$ISTIO-pilot-consul-$PILOT_CONSUL_VERSION}"
mkdir -p "$out/manifests"
"$out/istioctl" manifest generate -f "$root/build/install/istio-operator.yaml" \
	--set "values.pilot.image=$image" >"$out/manifests/istio.yaml"

log "rendered out/$ISTIO/manifests/istio.yaml (image $image)"
