#!/usr/bin/env bash
# Makes a Docker daemon answer for the kind tier, as the local tier starts
# its own Consul and etcd. Where one already answers (DOCKER_HOST or the
# default socket), it is used as is. Otherwise, as root with apt-get, it
# starts a private one:
#   - dockerd from Debian's docker.io package (installed when missing);
#   - its own socket, bridge, pid file and exec root; its data root in the
#     cache outside the clone, so built images survive fresh clones;
#   - every address inside 198.18.0.0/15 (bridge, address pools, the DNS
#     server containers are told to use), and forwarded packets from its
#     networks to anywhere else dropped;
#   - runc-capfix as the default runtime where this machine withholds
#     CAP_SYS_RESOURCE (see build/cmd/runc-capfix), plain runc elsewhere.
#
# usage: eval "$(build/docker-up.sh)"   prints export DOCKER_HOST=... and,
#                                       when it started a daemon, its PID
#        build/docker-up.sh stop        stops the daemon it started, by PID
#        build/docker-up.sh check       fails, saying why, where no daemon
#                                       answers and none could be started
set -euo pipefail
source "$(dirname "$0")/lib.sh"

state="$cache/docker"
sock="$state/docker.sock"
pidfile="$state/dockerd.pid"
execroot=/run/pilot-consul-docker # short: containerd's socket paths live under it
bridge=pcdocker0
bridge_cidr=198.19.255.1/24
pool=198.19.240.0/21
# The only DNS server containers get: our bridge address, where nothing
# listens, so no lookup ever leaves for the machine's own resolvers.
dns=198.19.255.1
# Forwarded packets from our networks may go to our networks only (and
# dockerd runs with --ip-masq=false: nothing is NATed out).
fw_rule=(-s 198.18.0.0/15 ! -d 198.18.0.0/15 -j DROP)

stop() {
	local pid nets=""
	pid=$(cat "$pidfile" 2>/dev/null) || log "no dockerd of ours is running; removing what one left"
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
		# dockerd keeps its networks' bridges for its next start: remove them.
		DOCKER_HOST="unix://$sock" docker network prune -f >/dev/null 2>&1 || true
		nets=$(DOCKER_HOST="unix://$sock" docker network ls -q --filter driver=bridge 2>/dev/null || true)
		log "stopping our dockerd (pid $pid)"
		kill "$pid"
		for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
		kill -0 "$pid" 2>/dev/null && { log "dockerd $pid still running after 30s: killing it"; kill -9 "$pid"; }
	fi
	rm -f "$pidfile"
	local n
	for n in $nets; do ip link del "br-${n:0:12}" 2>/dev/null || true; done
	ip link del "$bridge" 2>/dev/null || true
	remove_docker_iptables
	# dockerd unmounts what it mounted; a killed one may leave mounts behind.
	local m
	for m in $(grep -E " ($execroot|$state)[/ ]" /proc/self/mounts | awk '{print $2}' | sort -r); do
		umount -l "$m" || true
	done
	rm -rf --one-file-system "$execroot"
	if grep -qE " ($execroot|$state)[/ ]" /proc/self/mounts; then
		log "warning: mounts of our dockerd are left:"
		grep -E " ($execroot|$state)[/ ]" /proc/self/mounts >&2
	fi
}

# remove_docker_iptables deletes the chains and rules dockerd leaves in
# iptables, unless another Docker daemon (the system's) still uses them.
remove_docker_iptables() {
	if docker -H unix:///var/run/docker.sock info >/dev/null 2>&1; then
		return 0
	fi
	local table rule chain
	for table in filter nat; do
		iptables -t "$table" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*(DOCKER|pcdocker0|br-|198\.19\.)' |
			while read -r rule; do
				# shellcheck disable=SC2086 # the rule's words are iptables arguments
				iptables -t "$table" ${rule/#-A/-D} 2>/dev/null || true
			done
		for chain in $(iptables -t "$table" -S | sed -n 's/^-N \(DOCKER[A-Z0-9-]*\)$/\1/p'); do
			iptables -t "$table" -F "$chain" 2>/dev/null || true
		done
		for chain in $(iptables -t "$table" -S | sed -n 's/^-N \(DOCKER[A-Z0-9-]*\)$/\1/p'); do
			iptables -t "$table" -X "$chain" 2>/dev/null || true
		done
	done
	rmdir /run/docker/plugins /run/docker 2>/dev/null || true
	# dockerd turns forwarding on and the FORWARD policy to DROP: put back what was.
	if [[ -f "$state/host-net" ]]; then
		local policy forward
		read -r policy forward <"$state/host-net"
		iptables -P FORWARD "$policy" || true
		sysctl -qw "net.ipv4.ip_forward=$forward" || true
		rm -f "$state/host-net"
	fi
}

if [[ "${1:-}" == stop ]]; then
	stop
	exit 0
fi

# can_start fails, naming what is missing, where no daemon could be started.
can_start() {
	[[ $(id -u) -eq 0 ]] || die "no Docker daemon answers, and starting one needs root.
  Start Docker (or point DOCKER_HOST at one), or run as root on Debian/Ubuntu so
  the suite can install docker.io with apt-get and start its own."
	command -v dockerd >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1 || die "no Docker daemon answers and no apt-get to install docker.io.
  Install Docker (a daemon this user can reach) and run again."
}

if [[ "${1:-}" == check ]]; then
	docker info >/dev/null 2>&1 || DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1 || can_start
	exit 0
fi

if docker info >/dev/null 2>&1; then
	log "using the Docker daemon that already answers ($(docker info --format '{{.Name}} {{.ServerVersion}}'))"
	echo "export DOCKER_HOST=${DOCKER_HOST:-}"
	exit 0
fi
if DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
	log "using our dockerd from an earlier run ($sock)"
	echo "export DOCKER_HOST=unix://$sock PILOT_CONSUL_DOCKERD_PID=$(cat "$pidfile" 2>/dev/null)"
	exit 0
fi

can_start
if ! command -v dockerd >/dev/null 2>&1; then
	log "installing Debian's docker.io package (dockerd, containerd, runc)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io iptables >/dev/null
	# The package starts system services: ours is private, theirs stays off.
	systemctl disable --now docker.socket docker containerd >/dev/null 2>&1 || true
fi

mkdir -p "$state/data" "$execroot"
runtime_args=()
capbnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
if (( (16#$capbnd >> 24 & 1) == 0 )); then
	log "this machine withholds CAP_SYS_RESOURCE: dockerd runs containers through runc-capfix"
	mkdir -p "$cache/bin"
	(cd "$root" && CGO_ENABLED=0 go build -o "$cache/bin/runc-capfix" ./build/cmd/runc-capfix)
	runtime_args=(--add-runtime "capfix=$cache/bin/runc-capfix" --default-runtime capfix)
fi

if ! ip link show "$bridge" >/dev/null 2>&1; then
	ip link add "$bridge" type bridge
	ip addr add "$bridge_cidr" dev "$bridge"
	ip link set "$bridge" up
fi

# What dockerd changes on the host, for stop to restore.
[[ -f "$state/host-net" ]] || echo "$(iptables -S FORWARD | sed -n 's/^-P FORWARD //p') $(cat /proc/sys/net/ipv4/ip_forward)" >"$state/host-net"
log "starting a private dockerd (socket $sock, data root $state/data)"
# A killed earlier run leaves a stale pid file and socket.
rm -f "$pidfile" "$sock"
nohup dockerd \
	--host "unix://$sock" --data-root "$state/data" --exec-root "$execroot" --pidfile "$pidfile" \
	--bridge "$bridge" --default-address-pool "base=$pool,size=24" --dns "$dns" \
	--ip-masq=false --storage-driver overlay2 --log-level warn \
	"${runtime_args[@]}" >"$state/dockerd.log" 2>&1 &
for _ in $(seq 1 120); do
	DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1 && break
	sleep 0.5
done
DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1 || {
	tail -20 "$state/dockerd.log" >&2
	stop
	die "our dockerd did not answer within 60s (log above, $state/dockerd.log)"
}
iptables -C DOCKER-USER "${fw_rule[@]}" 2>/dev/null || iptables -I DOCKER-USER "${fw_rule[@]}"
echo "export DOCKER_HOST=unix://$sock PILOT_CONSUL_DOCKERD_PID=$(cat "$pidfile")"
