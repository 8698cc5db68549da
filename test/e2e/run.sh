#!/usr/bin/env bash
# make e2e: six meshagent daemons on six "hosts" (Linux network namespaces,
# each with a veth into a bridge this script creates and an address of its
# own), driven through the CLI only: bootstrap from one address, discovery by
# mDNS on the bridge, calls across hosts, a partition and its healing, a
# SIGKILL detected dead everywhere, a revocation reaching every host (the
# killed one as it restarts with the same identity), loss and latency (tbf;
# netem is not in every kernel), credential renewal across hosts.
#
# Every wait polls with a deadline; every step prints one line with its
# time; a failure prints the logs of the hosts involved. Namespaces, bridge,
# daemons and the temporary directory are removed on exit, failed or not.
# Without root (or where `ip netns add` fails) it says why and exits 0.
#
# Environment: MESHAGENT (binary, default bin/meshagent), E2E_KEEP=1 (keep
# the temporary directory), E2E_FAIL_STEP=NAME (fail that step on purpose:
# checks the cleanup).
set -euo pipefail
cd "$(dirname "$0")/../.."

M=$(realpath "${MESHAGENT:-bin/meshagent}")
N=6                  # hosts
HB=1                 # heartbeat, seconds
DEAD=4               # dead_after, seconds
CRED_TTL=60          # credential lifetime, seconds: renewed after 40
SUBNET=10.77.0       # host i is $SUBNET.$((10+i))/24
PORT=4001
ID_=$$               # suffix of every name: a crashed run's leftovers never collide
BR=mab$ID_
STEP=setup
INVOLVED=""
POLL_LAST=""
NS=() VETH=() HOMEDIR=() PEER=() PID=() IP=()
STARTED=$(date +%s%N)

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
secs() { printf '%d.%02ds' $(($1 / 1000)) $((($1 % 1000) / 10)); }
say() { echo "e2e: $*"; }
skip() {
	say "SKIP: $*"
	exit 0
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	for i in "${!PID[@]}"; do kill -TERM "${PID[$i]}" 2>/dev/null; done
	local end=$(($(now_ms) + 5000))
	for i in "${!PID[@]}"; do
		while kill -0 "${PID[$i]}" 2>/dev/null && (($(now_ms) < end)); do sleep 0.05; done
		kill -KILL "${PID[$i]}" 2>/dev/null
	done
	wait 2>/dev/null
	for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
	ip link del "$BR" 2>/dev/null
	if [[ -n ${TMP:-} ]]; then
		if [[ ${E2E_KEEP:-} == 1 ]]; then say "kept $TMP"; else rm -rf "$TMP"; fi
	fi
	[[ -n ${TMP:-} ]] || exit "$rc"
	local left
	left=$(ip netns list 2>/dev/null | grep -c "^ma$ID_-" || true)
	say "cleaned up: daemons stopped, ${#NS[@]} namespaces and bridge $BR removed ($left left)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fail says what went wrong in the current step, prints the logs of the
# hosts involved, and exits 1 (cleanup runs).
fail() {
	say "FAIL: $STEP: $*"
	for i in $INVOLVED; do
		local h=${HOMEDIR[$i]:-}
		[[ -n $h ]] || continue
		echo "----- host$i (${IP[$i]}) daemon log -----"
		cat "$h/daemon.log" 2>/dev/null || true
		echo "----- host$i audit log (last 20 lines) -----"
		tail -n 20 "$h/audit.log" 2>/dev/null || true
	done
	exit 1
}

# step NAME HOSTS...: starts a step; HOSTS are those whose logs a failure
# prints.
step() {
	STEP=$1
	shift
	INVOLVED="$*"
	STEP_T0=$(now_ms)
	if [[ ${E2E_FAIL_STEP:-} == "$STEP" ]]; then
		fail "failing on purpose (E2E_FAIL_STEP=$STEP)"
	fi
}
ok() { say "$(printf '%-12s' "$STEP") ok in $(secs $(($(now_ms) - STEP_T0))): $*"; }

# poll SECONDS WHAT CMD...: runs CMD until it succeeds; fails the step after
# SECONDS, with POLL_LAST (what CMD last saw wrong).
poll() {
	local limit=$1 what=$2
	shift 2
	local end=$(($(now_ms) + limit * 1000))
	POLL_LAST=""
	until "$@"; do
		if (($(now_ms) > end)); then fail "$what: not within ${limit}s${POLL_LAST:+ ($POLL_LAST)}"; fi
		sleep 0.1
	done
}

# --- preconditions: skip (exit 0), never fail, where namespaces cannot be made
[[ $(id -u) == 0 ]] || skip "not root: network namespaces need root (run 'sudo make e2e')"
command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
[[ -x $M ]] || {
	say "FAIL: no meshagent binary at $M (make build)"
	exit 1
}
if ! ip netns add "ma$ID_-probe" 2>/dev/null; then skip "'ip netns add' fails here (no CAP_SYS_ADMIN, or no netns support)"; fi
ip netns del "ma$ID_-probe"
old=$(ip netns list | grep -oE '^ma[0-9]+-[0-9]+' | grep -v "^ma$ID_-" | tr '\n' ' ' || true)
[[ -z $old ]] || say "note: namespaces of another run remain (a crashed one: 'ip netns del NAME'): $old"

TMP=$(mktemp -d /tmp/meshagent-e2e.XXXXXX)
Q=$TMP/e2eq
go build -o "$Q" ./test/e2e/e2eq

# --- the network: a bridge, and per host a namespace with a veth into it
step netns
ip link add "$BR" type bridge 2>/dev/null || skip "cannot create a bridge here (no CAP_NET_ADMIN, or no bridge support)"
ip link set "$BR" type bridge mcast_snooping 0 2>/dev/null || true # flood multicast (mDNS) to every port
ip link set "$BR" up
for i in $(seq 1 $N); do
	NS[i]=ma$ID_-$i
	VETH[i]=mav${ID_}n$i
	IP[i]=$SUBNET.$((10 + i))
	ip netns add "${NS[i]}"
	ip link add "${VETH[i]}" type veth peer name eth0 netns "${NS[i]}" 2>/dev/null || skip "cannot create a veth pair here (no veth support)"
	ip link set "${VETH[i]}" master "$BR" up
	ip -n "${NS[i]}" addr add "${IP[i]}/24" dev eth0
	ip -n "${NS[i]}" link set eth0 up
	ip -n "${NS[i]}" link set lo up
done
ok "bridge $BR, $N namespaces ma$ID_-1..$N on $SUBNET.0/24"

# --- identities: an anchor, six agents, credentials, tokens, configs
step identities
CA=$TMP/ca
ANCHOR=$("$M" ca init --dir "$CA")
for i in $(seq 1 $N); do
	HOMEDIR[i]=$TMP/h$i
	PEER[i]=$("$M" init --home "${HOMEDIR[i]}" --name "host$i")
	"$M" ca issue --dir "$CA" --agent "${PEER[i]}" --name "host$i" --ttl "${CRED_TTL}s" --out "${HOMEDIR[i]}/credential.pem"
	"$M" token issue --ca "$CA" --to "${PEER[i]}" --scopes ping:agent --ttl 1h --out "${HOMEDIR[i]}/ping.token"
done
# A token of host1's that the revocation step revokes, and a child of it
# that host1 delegates to host2.
"$M" token issue --ca "$CA" --to "${PEER[1]}" --scopes ping:agent --delegatable ping:agent --ttl 1h --out "$TMP/revocable.token"
"$M" token delegate --home "${HOMEDIR[1]}" --token "$TMP/revocable.token" --to "${PEER[2]}" --scopes ping:agent --ttl 30m --out "$TMP/child.token"
BOOT=/ip4/${IP[1]}/tcp/$PORT/p2p/${PEER[1]}
for i in $(seq 1 $N); do
	boot="[$BOOT]" mdns=false issuer=""
	# host1 is the bootstrap address and an issuer; host6 has no bootstrap
	# address: mDNS (on host1 and host6 only) is how it finds the mesh.
	case $i in
	1) boot="[]" mdns=true issuer="issuer_key: $CA/anchor.key" ;;
	6) boot="[]" mdns=true ;;
	esac
	cat >"${HOMEDIR[i]}/meshagent.yaml" <<-EOF
		name: host$i
		listen: [/ip4/${IP[i]}/tcp/$PORT, /ip4/${IP[i]}/udp/$PORT/quic-v1]
		bootstrap: $boot
		anchors: [$ANCHOR]
		credential: credential.pem
		tokens: [ping.token]
		audit_log: audit.log
		heartbeat: ${HB}s
		dead_after: ${DEAD}s
		mdns: $mdns
		$issuer
	EOF
done
ORIG_EXPIRES=$("$M" ca inspect "${HOMEDIR[1]}/credential.pem" | "$Q" 'expires|unix')
ok "anchor ${ANCHOR:0:16}..., $N agents, credentials for ${CRED_TTL}s, host1 an issuer"

# --- daemons
start_host() {
	local i=$1
	ip netns exec "${NS[i]}" "$M" run --home "${HOMEDIR[i]}" >>"${HOMEDIR[i]}/daemon.log" 2>&1 &
	PID[i]=$!
}
api_up() {
	kill -0 "${PID[$1]}" 2>/dev/null || fail "host$1's daemon exited"
	"$M" status --home "${HOMEDIR[$1]}" >/dev/null 2>&1
}

# states I J...: the state host I's registry holds for each host J, one a
# line ("-" when it has no entry).
states() {
	local i=$1 args=() j out
	shift
	for j; do args+=("[peer_id=${PEER[j]}].state"); done
	out=$("$M" peers --home "${HOMEDIR[i]}" 2>/dev/null) || {
		POLL_LAST="host$i's local API does not answer"
		return 1
	}
	"$Q" "${args[@]}" <<<"$out"
}

# mesh_is STATE "OBSERVERS" "SUBJECTS": every observer holds STATE (or, for
# !alive, anything but alive) for every subject but itself.
mesh_is() {
	local want=$1 i j k st subj out
	for i in $2; do
		subj=()
		for j in $3; do [[ $j == "$i" ]] || subj+=("$j"); done
		((${#subj[@]})) || continue
		out=$(states "$i" "${subj[@]}") || return 1
		mapfile -t st <<<"$out"
		for k in "${!subj[@]}"; do
			if [[ $want == '!alive' && ${st[k]:-} != alive ]] || [[ ${st[k]:-} == "$want" ]]; then continue; fi
			POLL_LAST="host$i holds host${subj[k]} as ${st[k]:--}"
			return 1
		done
	done
}

# call I J [ARGS...]: host I calls ping:agent on host J.
call() {
	local i=$1 j=$2
	shift 2
	"$M" send --home "${HOMEDIR[i]}" --to "${PEER[j]}" --action ping:agent "$@"
}

ALL=$(seq -s ' ' 1 $N)

step bootstrap 1 2 3 4 5
for i in 1 2 3 4 5; do start_host "$i"; done
for i in 1 2 3 4 5; do poll 20 "host$i's local API" api_up "$i"; done
poll 30 "hosts 1-5 alive at each other" mesh_is alive "1 2 3 4 5" "1 2 3 4 5"
ok "hosts 2-5 given only host1's address ($BOOT), all 5 alive at each other"

step mdns "$ALL"
start_host 6
poll 20 "host6's local API" api_up 6
poll 30 "host6 (no bootstrap address) and hosts 1-5 alive at each other" mesh_is alive "$ALL" "$ALL"
grep -q '^bootstrap: \[\]$' "${HOMEDIR[6]}/meshagent.yaml" || fail "host6's config has a bootstrap address"
ok "host6, with no bootstrap address, found the mesh by mDNS on the bridge; all $N alive at each other"

step calls "$ALL"
t0=$(now_ms)
n=0
for i in $(seq 1 $N); do
	for j in $(seq 1 $N); do
		((i != j)) || continue
		out=$(call "$i" "$j" 2>&1) || fail "host$i -> host$j: $out"
		[[ $("$Q" body.pong <<<"$out") == "host$j" ]] || fail "host$i -> host$j: unexpected reply $out"
		n=$((n + 1))
	done
done
for j in 2 3 4 5 6; do
	out=$(call 1 "$j" --token "$TMP/revocable.token" 2>&1) || fail "host1 -> host$j with the token the revocation step revokes: $out"
done
out=$(call 2 1 --token "$TMP/child.token" 2>&1) || fail "host2 -> host1 with the delegated token: $out"
ok "$n calls, every host to every other, $(secs $((($(now_ms) - t0) / n))) each with the CLI; the token to revoke passes"

step partition "$ALL"
# host3 (bootstrap peer: host1) and host6 (found by mDNS, no bootstrap
# address) each lose their link: each is cut off from every other host.
ip link set "${VETH[3]}" down
ip link set "${VETH[6]}" down
t0=$(now_ms)
poll $((3 * DEAD)) "hosts 1,2,4,5 hold hosts 3 and 6 dead" mesh_is dead "1 2 4 5" "3 6"
t_marked=$(($(now_ms) - t0))
poll $((3 * DEAD)) "hosts 3 and 6 hold no other host alive" mesh_is '!alive' "3 6" "$ALL"
for j in 3 6; do
	if out=$(call 1 "$j" --timeout 2s 2>&1); then fail "host1 -> host$j passed across the partition: $out"; fi
done
ip link set "${VETH[3]}" up
ip link set "${VETH[6]}" up
t1=$(now_ms)
poll 30 "all alive at each other after the partition healed" mesh_is alive "$ALL" "$ALL"
t_healed=$(($(now_ms) - t1))
for j in 3 6; do
	out=$(call 1 "$j" 2>&1) || fail "host1 -> host$j after healing: $out"
done
ok "links of host3 and host6 down: dead at the others in $(secs "$t_marked"); up: all alive again in $(secs "$t_healed")"

step sigkill 1 2 3 4 5 6
kill -KILL "${PID[4]}"
t0=$(now_ms)
{ wait "${PID[4]}"; } 2>/dev/null || true # the shell reports the kill on its own stderr
unset 'PID[4]'
limit=$(((DEAD + HB) * 1000))
declare -A seen=()
while ((${#seen[@]} < N - 1)); do
	for i in 1 2 3 5 6; do
		[[ -z ${seen[$i]:-} ]] || continue
		if [[ $(states "$i" 4 || true) == dead ]]; then seen[$i]=$(($(now_ms) - t0)); fi
	done
	if (($(now_ms) - t0 > 3 * limit)); then fail "host4 not dead everywhere after $(secs $((3 * limit))) (seen dead at: ${!seen[*]})"; fi
	sleep 0.05
done
worst=0 detail=""
for i in 1 2 3 5 6; do
	detail+=" host$i $(secs "${seen[$i]}")"
	((seen[$i] <= worst)) || worst=${seen[$i]}
done
((worst <= limit)) || fail "host4 seen dead after $(secs "$worst"), over dead_after + heartbeat = $(secs "$limit"):$detail"
ok "host4 SIGKILLed: dead at every other host within $(secs "$worst") (limit dead_after+heartbeat $(secs "$limit"); polled:$detail)"

step revocation 1 2 3 5 6
# host4 is down (SIGKILLed above): it learns the revocation as it rejoins.
link=$("$M" token inspect "$TMP/revocable.token" | "$Q" links.0.id)
"$M" ca revoke --dir "$CA" --token "$link" --out "$TMP/revocation.pem"
"$M" revoke --home "${HOMEDIR[6]}" "$TMP/revocation.pem" >/dev/null
t0=$(now_ms)
# refused I J TOKEN: host J refuses host I's call with TOKEN as revoked.
refused() {
	local out
	if out=$(call "$1" "$2" --token "$3" --timeout 3s 2>&1); then
		POLL_LAST="host$2 still accepts it"
		return 1
	fi
	[[ $out == *revoked* && $out == *"rejected by ${PEER[$2]}"* ]] || {
		POLL_LAST="host$1 -> host$2: $out"
		return 1
	}
}
for j in 2 3 5 6; do poll 20 "host$j refuses the revoked token" refused 1 "$j" "$TMP/revocable.token"; done
poll 20 "host1 refuses the delegated token" refused 2 1 "$TMP/child.token"
t_rev=$(($(now_ms) - t0))
for j in 2 3 5 6; do
	out=$(call 1 "$j" 2>&1) || fail "host1 -> host$j with its other token after the revocation: $out"
done
ok "link revoked at host6 while host4 is down: every running host refuses the token (host1 its delegated child) within $(secs "$t_rev"); other tokens pass"

step restart 1 2 3 4 5 6
# Nothing persisted: what host4 refuses, it learned as it rejoined.
! compgen -G "${HOMEDIR[4]}/revocations/*.pem" >/dev/null || fail "host4 persisted a revocation while down"
start_host 4
poll 20 "host4's local API" api_up 4
t0=$(now_ms)
[[ $("$M" status --home "${HOMEDIR[4]}" | "$Q" peer_id) == "${PEER[4]}" ]] || fail "host4 restarted with another peer ID"
poll 30 "host4 alive again everywhere" mesh_is alive "$ALL" "$ALL"
t_alive=$(($(now_ms) - t0))
out=$(call 1 4 2>&1) || fail "host1 -> host4 after the restart: $out"
poll 20 "host4 refuses the token revoked while it was down" refused 1 4 "$TMP/revocable.token"
ok "host4 restarted from its home: same peer ID, alive at every host $(secs "$t_alive") after its API was up; refuses the token revoked while it was down"

step shaping 1 5
# tbf on both ends of host5's link: 512 kbit/s with a 16 KiB queue. A 48 KiB
# call body waits behind the rate (latency) and overflows the queue (loss:
# TCP retransmits); netem is not in every kernel, tbf usually is.
pad=$(head -c 49152 /dev/zero | tr '\0' x)
body="{\"pad\":\"$pad\"}"
t0=$(now_ms)
out=$(call 1 5 --body "$body" 2>&1) || fail "host1 -> host5 with a 48 KiB body: $out"
before=$(($(now_ms) - t0))
if tc qdisc add dev "${VETH[5]}" root tbf rate 512kbit burst 8kb limit 16kb 2>"$TMP/tc.err" &&
	ip netns exec "${NS[5]}" tc qdisc add dev eth0 root tbf rate 512kbit burst 8kb limit 16kb 2>>"$TMP/tc.err"; then
	t0=$(now_ms)
	out=$(call 1 5 --body "$body" --timeout 20s 2>&1) || fail "host1 -> host5 through the shaped link: $out"
	during=$(($(now_ms) - t0))
	# 48 KiB at 64 KiB/s takes 0.75 s on the wire alone.
	((during >= 500)) || fail "the shaped call took $(secs "$during"): tbf had no effect"
	drops=$(tc -s qdisc show dev "${VETH[5]}" | grep -o 'dropped [0-9]*' | head -1)
	drops2=$(ip netns exec "${NS[5]}" tc -s qdisc show dev eth0 | grep -o 'dropped [0-9]*' | head -1)
	# Heartbeats still get through: host5 stays alive everywhere for
	# dead_after.
	end=$(($(now_ms) + DEAD * 1000))
	while (($(now_ms) < end)); do
		mesh_is alive "$ALL" 5 || fail "host5 not alive while shaped: $POLL_LAST"
		mesh_is alive 5 "$ALL" || fail "host5 lost the mesh while shaped: $POLL_LAST"
		sleep 0.2
	done
	tc qdisc del dev "${VETH[5]}" root
	ip netns exec "${NS[5]}" tc qdisc del dev eth0 root
	ok "48 KiB call host1 -> host5 in $(secs "$before"), $(secs "$during") through tbf 512kbit (to host5: $drops, from it: $drops2); host5 alive throughout"
else
	ip netns exec "${NS[5]}" tc qdisc del dev eth0 root 2>/dev/null || true
	tc qdisc del dev "${VETH[5]}" root 2>/dev/null || true
	say "$(printf '%-12s' "$STEP") SKIPPED: this kernel has no tbf qdisc ($(head -1 "$TMP/tc.err"))"
fi

step renewal "$ALL"
# renewed I: host I's credential and every other host's view of it end
# after the first credentials.
renewed() {
	local i=$1 j e
	e=$("$M" status --home "${HOMEDIR[i]}" 2>/dev/null | "$Q" 'credential.expires|unix')
	[[ $e != - && $e -gt $ORIG_EXPIRES ]] || {
		POLL_LAST="host$i's credential not renewed yet"
		return 1
	}
	for j in $ALL; do
		((j != i)) || continue
		e=$("$M" peers --home "${HOMEDIR[j]}" 2>/dev/null | "$Q" "[peer_id=${PEER[i]}].credential_expires|unix")
		[[ $e != - && $e -gt $ORIG_EXPIRES ]] || {
			POLL_LAST="host$j holds host$i's first credential"
			return 1
		}
	done
}
all_renewed() { for i in $ALL; do renewed "$i" || return 1; done; }
poll $((CRED_TTL + 30)) "every credential renewed, and seen renewed at every host" all_renewed
t_ren=$(($(now_ms) / 1000))
past() { (($(date +%s) > ORIG_EXPIRES + 1)) || { POLL_LAST="first credentials still valid"; return 1; }; }
poll $((CRED_TTL + 10)) "the first credentials expired" past
poll 10 "all alive at each other with renewed credentials" mesh_is alive "$ALL" "$ALL"
for i in 2 3 4 5 6; do
	out=$(call "$i" 1 2>&1) || fail "host$i -> host1 after the first credentials expired: $out"
done
ok "renewed by host1 (issuer) at every host and seen at every host $((t_ren - ORIG_EXPIRES + CRED_TTL))s after issue; past the first expiry all alive, calls pass"

STEP=finished
say "all steps passed in $(secs $((($(date +%s%N) - STARTED) / 1000000)))"
