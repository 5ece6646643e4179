#!/usr/bin/env bash
# Builds the kind node image from source, with no registry: kind's published
# node images cannot be pulled here, and `kind build node-image` fetches
# etcd, CoreDNS and pause from a registry. It follows kind's own builder
# (pkg/build/nodeimage): a base with systemd and containerd, kind's node
# files (images/base/files, shipped in kind's Go module), the Kubernetes
# binaries in /usr/bin, and the control-plane images imported into the node's
# containerd, then committed.
#   - base: Debian (debootstrap minbase) with systemd, containerd, runc,
#     CNI plugins, iptables and kind's other runtime needs;
#   - Kubernetes, etcd and CoreDNS built from their Go modules (build/tools.sh),
#     pause from build/cmd/pause; control-plane images FROM scratch, named as
#     `kubeadm config images list` prints them; kube-proxy FROM the base
#     (it needs iptables);
#   - CNI: a ptp/host-local conflist on the cluster's podSubnet instead of
#     kindnetd (its image is another pull);
#   - containerd runs runc through runc-capfix (a no-op where the machine
#     grants CAP_SYS_RESOURCE), so privileged pods work in sandboxes too.
# The image is tagged with a hash of every input; an existing tag is reused.
#
# usage: build/kind-node.sh   (prints the image name on stdout)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

suite=bookworm
packages=(systemd systemd-sysv dbus containerd runc containernetworking-plugins
	iptables nftables conntrack ethtool socat iproute2 util-linux mount kmod
	libseccomp2 ca-certificates procps jq pigz bash)
gomod() { (cd "$root/build/tools/$1" && go list -m -f '{{.Version}}' "$2"); }
k8s_version=$(gomod kubernetes k8s.io/kubernetes)
etcd_version=$(gomod etcd go.etcd.io/etcd/server/v3)
coredns_version=$(gomod coredns github.com/coredns/coredns)
kind_files="$(cd "$root/build/tools/kind" && go mod download -json sigs.k8s.io/kind | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')/images/base/files"
pod_subnet=$(sed -n 's/^[[:space:]]*podSubnet:[[:space:]]*//p' "$root/tests/e2e/kind/cluster.yaml")
[[ -d "$kind_files" && -n "$pod_subnet" ]] || die "kind's node files or the cluster's podSubnet not found"

# The image names kubeadm deploys (kubeadm config images list).
k8s_images=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
etcd_image="registry.k8s.io/etcd:${etcd_version#v}-0"
coredns_image="registry.k8s.io/coredns/coredns:$coredns_version"
pause_image="registry.k8s.io/pause:3.10.1"

key=$( {
	echo "$suite ${packages[*]} $k8s_version $etcd_version $coredns_version $pod_subnet $(go version)"
	cat "$0" "$root/build/kind/"* "$root/build/cmd/pause/"*.go "$root/build/cmd/runc-capfix/"*.go
	cat "$root"/build/tools/{kubernetes,etcd,coredns,kind}/go.{mod,sum}
} | sha256sum | cut -c1-12)
image="pilot-consul/kind-node:$k8s_version-$key"
if docker image inspect "$image" >/dev/null 2>&1; then
	log "kind node image $image is up to date"
	echo "$image"
	exit 0
fi
start=$SECONDS
ctx=$(mktemp -d "${TMPDIR:-/var/tmp}/pilot-consul-node-XXXXXX")
cid=""
cleanup() {
	[[ -z "$cid" ]] || docker rm -f -v "$cid" >/dev/null 2>&1 || true
	rm -rf "$ctx"
}
trap cleanup EXIT
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ctx/" ./build/cmd/pause ./build/cmd/runc-capfix)

# 1. The base root filesystem, cached as its own image (debootstrap is the slow part).
base="pilot-consul/kind-base:$suite-$(echo "${packages[*]}" | sha256sum | cut -c1-12)"
if ! docker image inspect "$base" >/dev/null 2>&1; then
	command -v debootstrap >/dev/null 2>&1 || {
		log "installing debootstrap"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
	}
	mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
		head -1 | grep -oE 'https?://[^ ]+' || true)
	mirror=${mirror:-http://deb.debian.org/debian}
	log "debootstrap $suite from $mirror (first run only, ~2 min)"
	debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" "$suite" "$ctx/rootfs" "$mirror" >"$ctx/debootstrap.log" 2>&1 ||
		{ tail -20 "$ctx/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
	rm -rf "$ctx/rootfs/var/lib/apt/lists/"* "$ctx/rootfs/var/cache/apt/"*.bin "$ctx/rootfs/var/cache/apt/archives/"*.deb
	tar -C "$ctx/rootfs" -c . | docker import - "$base" >/dev/null
	rm -rf "$ctx/rootfs"
fi

# 2. Control-plane images, saved for import into the node's containerd.
"$root/build/tools.sh" kube-node etcd-server coredns >&2
bin_image() { # name image binary [FROM]
	local dir="$ctx/img-$1" b
	b=$(basename "$3")
	mkdir -p "$dir"
	cp "$3" "$dir/"
	# kubeadm runs most by command name; CoreDNS's Deployment passes only args.
	printf 'FROM %s\nCOPY %s /usr/local/bin/%s\nENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin\nENTRYPOINT ["/usr/local/bin/%s"]\n' \
		"${4:-scratch}" "$b" "$b" "$b" >"$dir/Dockerfile"
	docker_build -t "$2" "$dir"
}
images=()
for n in "${k8s_images[@]}"; do
	from=scratch
	[[ $n != kube-proxy ]] || from=$base
	bin_image "$n" "registry.k8s.io/$n:$k8s_version" "$root/bin/$n" "$from"
	images+=("registry.k8s.io/$n:$k8s_version")
done
bin_image etcd "$etcd_image" "$root/bin/etcd"
bin_image coredns "$coredns_image" "$root/bin/coredns"
mkdir -p "$ctx/img-pause" && cp "$ctx/pause" "$ctx/img-pause/" &&
	printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$ctx/img-pause/Dockerfile" &&
	docker_build -t "$pause_image" "$ctx/img-pause"
images+=("$etcd_image" "$coredns_image" "$pause_image")
docker save -o "$ctx/images.tar" "${images[@]}"

# 3. The node: kind's files, the binaries, containerd and CNI configuration.
fs="$ctx/node/rootfs"
mkdir -p "$fs/usr/bin" "$fs/usr/local/sbin" "$fs/etc/cni/net.d" "$fs/kind"
cp -r "$kind_files/." "$fs/"
chmod -R u+w,go-w "$fs"
chmod 0755 "$fs"/usr/local/bin/* "$fs"/kind/bin/*
for b in kubeadm kubelet kubectl; do cp "$root/bin/$b" "$fs/usr/bin/"; done
cp "$ctx/runc-capfix" "$fs/usr/local/sbin/runc-capfix"
echo "$k8s_version" >"$fs/kind/version"
sed -e "s#sandbox_image = .*#sandbox_image = \"$pause_image\"#" \
	-e 's#^\(\s*\)SystemdCgroup = true#&\n\1BinaryName = "/usr/local/sbin/runc-capfix"#' \
	"$kind_files/etc/containerd/config.toml" >"$fs/etc/containerd/config.toml"
grep -q 'BinaryName = "/usr/local/sbin/runc-capfix"' "$fs/etc/containerd/config.toml" || die "could not set runc-capfix in kind's containerd config"
sed "s#POD_SUBNET#$pod_subnet#" "$root/build/kind/10-ptp.conflist" >"$fs/etc/cni/net.d/10-ptp.conflist"
cp "$root/build/kind/Dockerfile.node" "$ctx/node/Dockerfile"
docker_build --build-arg "BASE=$base" -t "$image-stage" "$ctx/node"

# 4. Import the images into the node's containerd and commit, as kind's builder does.
cid=$(docker run -d --privileged --entrypoint sleep "$image-stage" infinity)
docker exec "$cid" bash -c 'nohup containerd >/var/log/containerd-build.log 2>&1 &'
for _ in $(seq 1 60); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
docker exec -i "$cid" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
	--all-platforms --no-unpack --digests - <"$ctx/images.tar" >/dev/null
imported=$(docker exec "$cid" ctr --namespace=k8s.io images list -q)
for i in "${images[@]}"; do grep -qx "$i" <<<"$imported" || die "image $i missing from the node after import"; done
# Nothing reaps containerd under sleep: wait for it to be a zombie, not gone.
docker exec "$cid" bash -c 'pkill containerd; while ps -o stat= -C containerd | grep -qv Z; do sleep 0.2; done; rm -f /var/log/containerd-build.log'
docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' "$cid" "$image" >/dev/null
docker rm -f -v "$cid" >/dev/null && cid=""
docker rmi "$image-stage" >/dev/null
docker rmi "${images[@]}" >/dev/null # they live inside the node image now
# Earlier node images (other inputs) would only fill the disk.
docker images --format '{{.Repository}}:{{.Tag}}' pilot-consul/kind-node | grep -vx "$image" | xargs -r docker rmi >/dev/null 2>&1 || true
log "built kind node image $image in $((SECONDS - start))s"
echo "$image"
