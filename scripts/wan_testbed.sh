#!/usr/bin/env bash
# wan_testbed.sh — emulate N compute centres joined by shaped wide-area links on one machine, and run
# mpirun jobs across them. Needs root (network namespaces, tc). Used by users, benchmarks and the
# `wan_testbed` CTest test.
#
# Topology (prefix P, default "aqc"; N centres):
#
#     netns P-0 (centre0)  wan0 10.77.0.1 ──veth── c0 ┐
#     netns P-1 (centre1)  wan0 10.77.0.2 ──veth── c1 ┼─ br0 10.77.0.254   in netns P-hub (mpirun runs here)
#     ...                                            ┘
#
#   Each veth end's egress carries a `tc tbf` qdisc at RATE, so every centre has RATE up and RATE down; traffic
#   between two centres crosses two shaped links (sender's upload, receiver's download). Ranks of one centre
#   talk over the centre's own address, which the kernel delivers through that namespace's loopback: unshaped,
#   and not counted on wan0. No address outside these namespaces is used; the root namespace is not touched.
#   LATENCY IS NOT EMULATED: `netem` is not available on these kernels, so a link has bandwidth limits only
#   (plus tbf's queueing). Model WAN latency separately (e.g. in the cost model's α).
#
# Usage (as root):
#   wan_testbed.sh up --centres N --rate RATE [--mtu BYTES] [--name P]
#       RATE: tc units, e.g. 100mbit, 1gbit, 500kbit, or "none" (unshaped). MTU: of the links (1500; at 1500
#       Ethernet/IP/TCP headers add ~4.6% to the payload, at 9000 ~0.7%). `up` on a testbed that is already up
#       refuses (exit 3): run `down` first. Writes /run/aq-wan-testbed/P.env (centres, namespaces, interfaces,
#       addresses) and the rsh agent /run/aq-wan-testbed/P/agent.
#   wan_testbed.sh run NP [--name P] [--ranks-per-centre a,b,...] [--env K=V]... [--cpu-quota centreK=F]...
#                         [--mca KEY VALUE]... -- CMD [ARG...]
#       mpirun -np NP across the centres: ranks are packed by centre (ranks 0..a-1 in centre0, the next b in
#       centre1, ...). Default split: NP / N each, the first NP % N centres one more. Each centre's ranks see
#       AQ_CENTRE=centreK and hostname centreK. --env K=V sets K for every rank. --cpu-quota centre1=0.5
#       limits all of centre1's ranks together to half a core (cgroup v1 cpu controller), emulating a slower
#       centre. --mca adds an Open MPI parameter. Exit code: mpirun's.
#   wan_testbed.sh bytes [--name P] [--json]
#       one line per centre: `centreK tx=BYTES rx=BYTES` (bytes the centre sent / received over its link, from
#       /sys/class/net/wan0/statistics inside its namespace); --json prints {"centre0":{"tx":..,"rx":..},...}.
#   wan_testbed.sh throughput [--name P] [--from centre0] [--to centre1] [--seconds 5]
#       a bounded-time TCP transfer (python3) between two centres: `centre0->centre1 bytes=.. seconds=..
#       mbit_s=.. shaped_mbit_s=.. share=..` (goodput, without TCP/IP headers; no other traffic meanwhile).
#   wan_testbed.sh status [--name P] [--json]   what is up (exit 0; --json: name, centres, rate, rate_bits_per_s,
#       namespaces and addresses), or exit 3 when this testbed is not up
#   wan_testbed.sh down [--name P]        remove namespaces, links, cgroups and state; safe to call twice
#
# Exit codes: 0 ok; 1 error; 2 bad usage; 3 testbed not up (run/bytes/status) or already up (up);
#             77 this machine cannot host a testbed (not root, no network namespaces, no tbf, no mpirun):
#             tests skip on 77.
#
# Example:
#   scripts/wan_testbed.sh up --centres 2 --rate 100mbit
#   scripts/wan_testbed.sh bytes > before.txt
#   scripts/wan_testbed.sh run 4 --env OMP_NUM_THREADS=1 -- build/bin/aq-train --threads 1 --data 'data/train_*.bin'
#   scripts/wan_testbed.sh bytes > after.txt
#   scripts/wan_testbed.sh down
set -euo pipefail

ME=wan_testbed.sh
STATE_DIR=/run/aq-wan-testbed
NET=10.77.0             # /24 inside the namespaces only; hub is .254, centre k is .(k+1)
HUB_ADDR=$NET.254
CENTRE_IF=wan0          # the centre's end of its link, inside the centre's namespace
BRIDGE=br0              # in the hub namespace
CGROUP_ROOT=/sys/fs/cgroup/cpu  # cgroup v1 cpu hierarchy on the host (for --cpu-quota)

die() {  # CODE MESSAGE
  echo "$ME: $2" >&2
  exit "$1"
}

need_root() {
  [[ $(id -u) -eq 0 ]] || die 77 "needs root (network namespaces and tc qdiscs); you are uid $(id -u): run it as root or with sudo"
  command -v ip > /dev/null || die 77 "'ip' (iproute2) not found: apt-get install iproute2"
  command -v tc > /dev/null || die 77 "'tc' (iproute2) not found: apt-get install iproute2"
  command -v unshare > /dev/null || die 77 "'unshare' (util-linux) not found: apt-get install util-linux"
}

check_name() {
  [[ $PREFIX =~ ^[a-z][a-z0-9]{0,11}$ ]] ||
    die 2 "--name '$PREFIX' must be 1-12 lower-case letters or digits, starting with a letter (namespaces are NAME-0, NAME-1, ..., NAME-hub)"
}

state_file() { echo "$STATE_DIR/$PREFIX.env"; }

load_state() {  # sets CENTRES, RATE, HUB_NS, CENTRE_NS[], CENTRE_NAME[], CENTRE_ADDR[], HUB_IF[], AGENT
  local f
  f=$(state_file)
  [[ -f $f ]] || die 3 "no testbed '$PREFIX' is up ($f missing): run '$ME up --centres N --rate RATE${PREFIX_FLAG}' first"
  # shellcheck disable=SC1090
  source "$f"
  read -r -a CENTRE_NS <<< "$CENTRE_NS_LIST"
  read -r -a CENTRE_NAME <<< "$CENTRE_NAME_LIST"
  read -r -a CENTRE_ADDR <<< "$CENTRE_ADDR_LIST"
  read -r -a HUB_IF <<< "$HUB_IF_LIST"
  local ns have
  have=" $(ip netns list | awk '{print $1}' | tr '\n' ' ') "
  for ns in "$HUB_NS" "${CENTRE_NS[@]}"; do
    [[ $have == *" $ns "* ]] ||
      die 1 "state file $f lists namespace $ns, which does not exist (removed by hand?): run '$ME down${PREFIX_FLAG}' and 'up' again"
  done
}

# ---------------------------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------------------------
rate_bits() {  # RATE -> bits per second (tc units bit, kbit, mbit, gbit; k = 1000)
  local r=$1 num unit
  [[ $r =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] ||
    die 2 "--rate '$r' is not a rate like 100mbit, 1gbit or 500kbit (or 'none' for no shaping)"
  num=$((10#${BASH_REMATCH[1]}))
  unit=${BASH_REMATCH[2]}
  ((num > 0)) || die 2 "--rate '$r' must be above zero (or 'none' for no shaping)"
  case $unit in
    bit) echo "$num" ;;
    kbit) echo $((num * 1000)) ;;
    mbit) echo $((num * 1000000)) ;;
    gbit) echo $((num * 1000000000)) ;;
  esac
}

shape() {  # NS IF RATE: tbf on IF's egress. burst = 10 ms at RATE (>= 16 KB, so a 1 kHz timer can keep up);
  #          queue up to 100 ms at RATE before dropping (TCP then backs off, as it would on a real WAN).
  local ns=$1 dev=$2 rate=$3 bits burst
  bits=$(rate_bits "$rate")
  burst=$((bits / 8 / 100))
  ((burst >= 16384)) || burst=16384
  ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms ||
    { teardown quiet; die 1 "up: 'tc qdisc replace dev $dev root tbf rate $rate burst $burst latency 100ms' failed in $ns (error above); removed what was created"; }
}

no_ipv6() {  # NS: IPv6 off, so neighbour discovery and MLD chatter do not add to the link byte counters.
  #             Best effort: a kernel without IPv6 has nothing to turn off.
  ip netns exec "$1" sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
    [ ! -e "$f" ] || echo 1 > "$f"; done'
}

cmd_up() {
  local centres="" rate="" mtu=1500
  while (($#)); do
    case $1 in
      --centres) centres=${2:-}; shift 2 ;;
      --rate) rate=${2:-}; shift 2 ;;
      --mtu) mtu=${2:-}; shift 2 ;;
      --name) PREFIX=${2:-}; PREFIX_FLAG=" --name $PREFIX"; shift 2 ;;
      *) die 2 "up: unknown argument '$1' (usage: up --centres N --rate RATE [--mtu BYTES] [--name PREFIX])" ;;
    esac
  done
  [[ $mtu =~ ^[0-9]+$ ]] && ((mtu >= 576 && mtu <= 65535)) || die 2 "up: --mtu '$mtu' must be a number from 576 to 65535"

  check_name
  [[ $centres =~ ^[0-9]+$ ]] && ((centres >= 2 && centres <= 200)) ||
    die 2 "up: --centres '$centres' must be a number from 2 to 200"
  [[ -n $rate ]] || die 2 "up: --rate is required, e.g. --rate 100mbit (or --rate none)"
  [[ $rate == none ]] || rate_bits "$rate" > /dev/null
  need_root
  local f
  f=$(state_file)
  [[ ! -f $f ]] || die 3 "up: testbed '$PREFIX' is already up ($f): run '$ME down${PREFIX_FLAG}' first, or pick another --name"
  local existing
  existing=$(ip netns list | awk '{print $1}' | grep -E "^${PREFIX}-([0-9]+|hub)$" || true)
  [[ -z $existing ]] ||
    die 3 "up: namespaces $(echo "$existing" | tr '\n' ' ')already exist without a state file: run '$ME down${PREFIX_FLAG}' first"

  HUB_NS=$PREFIX-hub
  CENTRES=$centres
  RATE=$rate
  CENTRE_NS=()
  CENTRE_NAME=()
  CENTRE_ADDR=()
  HUB_IF=()
  mkdir -p "$STATE_DIR/$PREFIX"
  local err
  if ! err=$(ip netns add "$HUB_NS" 2>&1); then
    rm -rf "${STATE_DIR:?}/$PREFIX"
    die 77 "cannot create network namespace $HUB_NS (${err//$'\n'/ }): this machine cannot host the testbed"
  fi
  if [[ $rate != none ]] &&
    ! err=$(ip netns exec "$HUB_NS" tc qdisc add dev lo root tbf rate 1mbit burst 16kb latency 100ms 2>&1); then
    teardown quiet
    die 77 "cannot shape links: 'tc qdisc add ... tbf' fails (${err//$'\n'/ }); load sch_tbf (modprobe sch_tbf) or use --rate none"
  fi
  # From here on, any failure removes what was created.
  trap 'rc=$?; teardown quiet; echo "$ME: up failed (exit $rc, error above); removed what it had created" >&2; exit 1' ERR
  [[ $rate == none ]] || ip netns exec "$HUB_NS" tc qdisc del dev lo root
  no_ipv6 "$HUB_NS"
  ip -n "$HUB_NS" link set lo up
  ip -n "$HUB_NS" link add "$BRIDGE" type bridge
  ip -n "$HUB_NS" link set "$BRIDGE" mtu "$mtu"
  ip -n "$HUB_NS" addr add "$HUB_ADDR/24" dev "$BRIDGE"
  ip -n "$HUB_NS" link set "$BRIDGE" up
  local k ns
  for ((k = 0; k < centres; k++)); do
    ns=$PREFIX-$k
    CENTRE_NS+=("$ns")
    CENTRE_NAME+=("centre$k")
    CENTRE_ADDR+=("$NET.$((k + 1))")
    HUB_IF+=("c$k")
    ip netns add "$ns"
    no_ipv6 "$ns"
    ip -n "$ns" link set lo up
    # Both ends are created directly in their namespaces: no interface ever appears in the root namespace.
    ip -n "$HUB_NS" link add "c$k" mtu "$mtu" type veth peer name "$CENTRE_IF" mtu "$mtu" netns "$ns"
    ip -n "$HUB_NS" link set "c$k" master "$BRIDGE"
    ip -n "$HUB_NS" link set "c$k" up
    ip -n "$ns" addr add "$NET.$((k + 1))/24" dev "$CENTRE_IF"
    ip -n "$ns" link set "$CENTRE_IF" up
    if [[ $rate != none ]]; then
      shape "$ns" "$CENTRE_IF" "$rate"   # the centre's upload
      shape "$HUB_NS" "c$k" "$rate"      # the centre's download
    fi
  done
  write_agent
  {
    echo "# wan_testbed.sh state for testbed '$PREFIX' (written by 'up' at $(date -u +%FT%TZ)); removed by 'down'"
    echo "PREFIX=$PREFIX"
    echo "CENTRES=$CENTRES"
    echo "RATE=$RATE"
    echo "SUBNET=$NET.0/24"
    echo "HUB_NS=$HUB_NS"
    echo "HUB_ADDR=$HUB_ADDR"
    echo "BRIDGE=$BRIDGE"
    echo "CENTRE_IF=$CENTRE_IF"
    echo "CENTRE_NS_LIST=\"${CENTRE_NS[*]}\""
    echo "CENTRE_NAME_LIST=\"${CENTRE_NAME[*]}\""
    echo "CENTRE_ADDR_LIST=\"${CENTRE_ADDR[*]}\""
    echo "HUB_IF_LIST=\"${HUB_IF[*]}\""
    echo "AGENT=$STATE_DIR/$PREFIX/agent"
  } > "$f.tmp"
  mv "$f.tmp" "$f"
  trap - ERR
  local shaping="each link shaped to $rate up and $rate down (tc tbf)"
  [[ $rate != none ]] || shaping="links not shaped (--rate none)"
  echo "$ME: testbed '$PREFIX' up: $centres centres, $shaping; no latency emulated (netem is not available on this kernel)"
  for ((k = 0; k < centres; k++)); do
    echo "  ${CENTRE_NAME[k]}: netns ${CENTRE_NS[k]}, $CENTRE_IF ${CENTRE_ADDR[k]}/24 <-> ${HUB_IF[k]} on $BRIDGE in $HUB_NS ($HUB_ADDR)"
  done
  echo "  state: $f"
}

write_agent() {
  # The rsh agent Open MPI calls as `agent HOST CMD...` to start its daemon (orted) on HOST. HOST is a centre
  # name from the generated hostfile; the daemon runs in that centre's namespace with its own hostname
  # (Open MPI 4.1 crashes in MPI_Comm_split when two nodes share one) and AQ_CENTRE, which its ranks inherit.
  # With AQ_WAN_CPU_QUOTA_<centre>=F in the environment, the daemon (and so every rank of that centre) is put
  # in a cgroup limited to F cores.
  local a=$STATE_DIR/$PREFIX/agent k
  {
    echo '#!/usr/bin/env bash'
    echo "# rsh agent of wan_testbed.sh testbed '$PREFIX' (generated by 'up'): agent HOST CMD..."
    echo 'set -euo pipefail'
    echo 'host=$1; shift'
    echo 'case $host in'
    for ((k = 0; k < CENTRES; k++)); do echo "  ${CENTRE_NAME[k]}) ns=${CENTRE_NS[k]} ;;"; done
    echo "  *) echo \"wan_testbed agent ($PREFIX): unknown host '\$host' (known: ${CENTRE_NAME[*]})\" >&2; exit 1 ;;"
    echo 'esac'
    echo 'quota_var=AQ_WAN_CPU_QUOTA_$host'
    echo 'quota=${!quota_var:-}'
    echo 'pre=""'
    echo 'if [[ -n $quota ]]; then'
    echo '  # /sys is remounted inside `ip netns exec`, so the cgroup tree is mounted again in its private mount namespace.'
    echo "  cg=aq-wan-$PREFIX-\$host"
    echo '  pre="mkdir -p /tmp/.aq-wan-cg-$$ && mount -t cgroup -o cpu cgroup /tmp/.aq-wan-cg-$$ && mkdir -p /tmp/.aq-wan-cg-$$/$cg && echo 100000 > /tmp/.aq-wan-cg-$$/$cg/cpu.cfs_period_us && echo $quota > /tmp/.aq-wan-cg-$$/$cg/cpu.cfs_quota_us && echo \$\$ > /tmp/.aq-wan-cg-$$/$cg/tasks && umount /tmp/.aq-wan-cg-$$ && rmdir /tmp/.aq-wan-cg-$$ || { echo \"wan_testbed agent: cannot put $host in cgroup $cg (cgroup v1 cpu controller missing?)\" >&2; exit 1; }; "'
    echo 'fi'
    echo 'exec ip netns exec "$ns" unshare --uts sh -c "${pre}hostname $host && export AQ_CENTRE=$host && $*"'
  } > "$a"
  chmod 755 "$a"
}

# ---------------------------------------------------------------------------------------------------------
# down
# ---------------------------------------------------------------------------------------------------------
teardown() {  # [quiet]: remove every namespace of PREFIX (deleting a namespace deletes its veth ends and
  #              bridge), this testbed's cgroups and its state.
  local ns removed=""
  trap - ERR
  for ns in $(ip netns list 2> /dev/null | awk '{print $1}' | grep -E "^${PREFIX}-([0-9]+|hub)$" || true); do
    # A namespace still holding processes (a run that is still going) stays alive until they end, but its
    # name is released, so `up` can be run again at once.
    ip netns pids "$ns" 2> /dev/null | while read -r pid; do kill "$pid" 2> /dev/null || true; done
    ip netns del "$ns" && removed+="$ns "
  done
  local cg
  for cg in "$CGROUP_ROOT"/aq-wan-"$PREFIX"-centre*; do
    [[ -d $cg ]] && rmdir "$cg" 2> /dev/null || true
  done
  rm -rf "${STATE_DIR:?}/$PREFIX" "$STATE_DIR/$PREFIX.env" "$STATE_DIR/$PREFIX.env.tmp"
  if [[ ${1:-} != quiet ]]; then
    if [[ -n $removed ]]; then
      echo "$ME: testbed '$PREFIX' down (removed namespaces ${removed% })"
    else
      echo "$ME: testbed '$PREFIX' was not up; nothing to remove"
    fi
  fi
}

cmd_down() {
  while (($#)); do
    case $1 in
      --name) PREFIX=${2:-}; PREFIX_FLAG=" --name $PREFIX"; shift 2 ;;
      *) die 2 "down: unknown argument '$1' (usage: down [--name PREFIX])" ;;
    esac
  done
  check_name
  need_root
  teardown
}

# ---------------------------------------------------------------------------------------------------------
# status, bytes
# ---------------------------------------------------------------------------------------------------------
parse_name_only() {  # shared by status and bytes; sets JSON
  JSON=0
  while (($#)); do
    case $1 in
      --name) PREFIX=${2:-}; PREFIX_FLAG=" --name $PREFIX"; shift 2 ;;
      --json) JSON=1; shift ;;
      *) die 2 "$CMD: unknown argument '$1' (usage: $CMD [--name PREFIX] [--json])" ;;
    esac
  done
  check_name
}

counter() {  # NS IF tx|rx
  ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3_bytes"
}

cmd_bytes() {
  parse_name_only "$@"
  need_root
  load_state
  local k tx rx sep=""
  ((JSON)) && printf '{'
  for ((k = 0; k < CENTRES; k++)); do
    tx=$(counter "${CENTRE_NS[k]}" "$CENTRE_IF" tx)
    rx=$(counter "${CENTRE_NS[k]}" "$CENTRE_IF" rx)
    if ((JSON)); then
      printf '%s"%s":{"tx":%s,"rx":%s}' "$sep" "${CENTRE_NAME[k]}" "$tx" "$rx"
      sep=","
    else
      echo "${CENTRE_NAME[k]} tx=$tx rx=$rx"
    fi
  done
  ((JSON)) && printf '}\n'
  return 0
}

cmd_status() {
  parse_name_only "$@"
  need_root
  load_state
  local k q
  if ((JSON)); then
    local bits=0 sep=""
    [[ $RATE == none ]] || bits=$(rate_bits "$RATE")
    printf '{"name":"%s","centres":%d,"rate":"%s","rate_bits_per_s":%s,"latency_emulated":false,"hub_netns":"%s","hub_addr":"%s","centre":[' \
      "$PREFIX" "$CENTRES" "$RATE" "$bits" "$HUB_NS" "$HUB_ADDR"
    for ((k = 0; k < CENTRES; k++)); do
      printf '%s{"name":"%s","netns":"%s","if":"%s","addr":"%s"}' "$sep" "${CENTRE_NAME[k]}" "${CENTRE_NS[k]}" \
        "$CENTRE_IF" "${CENTRE_ADDR[k]}"
      sep=","
    done
    printf ']}\n'
    return 0
  fi
  echo "testbed '$PREFIX': $CENTRES centres, rate $RATE per direction (no latency emulated), hub $HUB_NS $HUB_ADDR"
  for ((k = 0; k < CENTRES; k++)); do
    q=$(ip netns exec "${CENTRE_NS[k]}" tc qdisc show dev "$CENTRE_IF" | head -1)
    echo "  ${CENTRE_NAME[k]}: netns ${CENTRE_NS[k]} $CENTRE_IF ${CENTRE_ADDR[k]}" \
      "tx=$(counter "${CENTRE_NS[k]}" "$CENTRE_IF" tx) rx=$(counter "${CENTRE_NS[k]}" "$CENTRE_IF" rx); qdisc: $q"
  done
}

# Bounded-time TCP transfer from one centre to another (python3 sockets in the two namespaces): what a link
# really carries, e.g. to check the shaping or calibrate a cost model's bandwidth term.
TPUT_PY='
import socket, sys, time
mode, addr, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 5201)); s.listen(1); s.settimeout(secs + 10)
    print("ready", flush=True)
    c, _ = s.accept(); c.settimeout(secs + 10)
    n, t0 = 0, None
    while True:
        b = c.recv(1 << 20)
        if not b: break
        if t0 is None: t0 = time.monotonic()
        n += len(b)
    print(n, time.monotonic() - t0)
else:
    c = socket.create_connection((addr, 5201), timeout=10)
    buf, t0 = b"\0" * (1 << 16), time.monotonic()
    while time.monotonic() - t0 < secs: c.sendall(buf)
    c.close()
'

cmd_throughput() {
  local from=centre0 to=centre1 secs=5
  while (($#)); do
    case $1 in
      --name) PREFIX=${2:-}; PREFIX_FLAG=" --name $PREFIX"; shift 2 ;;
      --from) from=${2:-}; shift 2 ;;
      --to) to=${2:-}; shift 2 ;;
      --seconds) secs=${2:-}; shift 2 ;;
      *) die 2 "throughput: unknown argument '$1' (usage: throughput [--from centreA] [--to centreB] [--seconds S])" ;;
    esac
  done
  [[ $secs =~ ^[0-9]+$ ]] && ((secs >= 1 && secs <= 120)) || die 2 "throughput: --seconds '$secs' must be 1 to 120"
  check_name
  need_root
  command -v python3 > /dev/null || die 77 "throughput: python3 not found: apt-get install python3"
  load_state
  local k fns="" tns="" taddr=""
  for ((k = 0; k < CENTRES; k++)); do
    [[ ${CENTRE_NAME[k]} == "$from" ]] && fns=${CENTRE_NS[k]}
    [[ ${CENTRE_NAME[k]} == "$to" ]] && { tns=${CENTRE_NS[k]}; taddr=${CENTRE_ADDR[k]}; }
  done
  [[ -n $fns && -n $tns && $from != "$to" ]] ||
    die 2 "throughput: --from $from --to $to must be two different centres of ${CENTRE_NAME[*]}"
  local out
  out=$(mktemp)
  timeout $((secs + 20)) ip netns exec "$tns" python3 -c "$TPUT_PY" recv "$taddr" "$secs" > "$out" &
  local rpid=$! t
  for ((t = 0; t < 50; t++)); do grep -q ready "$out" && break; sleep 0.1; done
  grep -q ready "$out" || { kill "$rpid" 2> /dev/null; rm -f "$out"; die 1 "throughput: receiver in $tns did not start within 5 s"; }
  timeout $((secs + 20)) ip netns exec "$fns" python3 -c "$TPUT_PY" send "$taddr" "$secs" ||
    { kill "$rpid" 2> /dev/null; rm -f "$out"; die 1 "throughput: sender in $fns failed (error above)"; }
  wait "$rpid" || { rm -f "$out"; die 1 "throughput: receiver in $tns failed (error above)"; }
  local bytes dt
  read -r bytes dt < <(tail -1 "$out")
  rm -f "$out"
  local rate_bits_s=0
  [[ $RATE == none ]] || rate_bits_s=$(rate_bits "$RATE")
  awk -v f="$from" -v t="$to" -v b="$bytes" -v s="$dt" -v r="$rate_bits_s" 'BEGIN {
    m = b * 8 / s / 1e6
    printf "%s->%s bytes=%.0f seconds=%.3f mbit_s=%.1f", f, t, b, s, m
    if (r > 0) printf " shaped_mbit_s=%.1f share=%.3f", r / 1e6, m * 1e6 / r
    printf "\n" }'
}

# ---------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------
cmd_run() {
  local np="" split="" envs=() quotas=() mcas=()
  [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]] && { np=$1; shift; }
  while (($#)); do
    case $1 in
      --name) PREFIX=${2:-}; PREFIX_FLAG=" --name $PREFIX"; shift 2 ;;
      --ranks-per-centre) split=${2:-}; shift 2 ;;
      --env) [[ ${2:-} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die 2 "run: --env '${2:-}' must be NAME=VALUE"
        envs+=("$2"); shift 2 ;;
      --cpu-quota) quotas+=("${2:-}"); shift 2 ;;
      --mca) [[ $# -ge 3 ]] || die 2 "run: --mca needs KEY VALUE"
        mcas+=(--mca "$2" "$3"); shift 3 ;;
      --) shift; break ;;
      *) die 2 "run: unknown argument '$1' (usage: run NP [--ranks-per-centre a,b,...] [--env K=V]... [--cpu-quota centreK=F]... [--mca K V]... -- CMD...)" ;;
    esac
  done
  (($#)) || die 2 "run: no command after '--' (usage: run NP [options] -- CMD...)"
  [[ $np =~ ^[0-9]+$ ]] && ((np >= 1)) || die 2 "run: NP (the number of ranks) must come first and be at least 1"
  check_name
  need_root
  command -v mpirun > /dev/null || die 77 "run: mpirun not found: apt-get install openmpi-bin"
  load_state

  local per=() k sum=0
  if [[ -n $split ]]; then
    [[ $split =~ ^[0-9]+(,[0-9]+)*$ ]] || die 2 "run: --ranks-per-centre '$split' must be counts like 3,1"
    IFS=, read -r -a per <<< "$split"
    ((${#per[@]} == CENTRES)) ||
      die 2 "run: --ranks-per-centre $split lists ${#per[@]} centres, the testbed has $CENTRES: give one count per centre"
    for k in "${per[@]}"; do sum=$((sum + k)); done
    ((sum == np)) || die 2 "run: --ranks-per-centre $split adds up to $sum ranks, but NP is $np: make them agree"
  else
    for ((k = 0; k < CENTRES; k++)); do per+=($((np / CENTRES + (k < np % CENTRES ? 1 : 0)))); done
  fi

  local tmp
  tmp=$(mktemp -d "/tmp/aq-wan-run.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  for ((k = 0; k < CENTRES; k++)); do
    ((per[k] > 0)) && echo "${CENTRE_NAME[k]} slots=${per[k]} max_slots=${per[k]}"
  done > "$tmp/hostfile"

  local envflags=() e q c f
  for e in "${envs[@]}"; do
    export "${e?}"
    envflags+=(-x "${e%%=*}")
  done
  for q in "${quotas[@]}"; do
    [[ $q =~ ^(centre[0-9]+)=([0-9]*\.?[0-9]+)$ ]] || die 2 "run: --cpu-quota '$q' must be centreK=CORES, e.g. centre1=0.5"
    c=${BASH_REMATCH[1]}
    f=${BASH_REMATCH[2]}
    [[ " ${CENTRE_NAME[*]} " == *" $c "* ]] || die 2 "run: --cpu-quota names $c; the testbed has ${CENTRE_NAME[*]}"
    [[ -d $CGROUP_ROOT ]] || die 77 "run: --cpu-quota needs the cgroup v1 cpu controller at $CGROUP_ROOT, which this machine lacks"
    local us
    us=$(awk -v f="$f" 'BEGIN { printf "%d", f * 100000 }')
    ((us >= 1000)) || die 2 "run: --cpu-quota $q is below 0.01 cores"
    export "AQ_WAN_CPU_QUOTA_$c=$us"
  done

  # mpirun runs in the hub namespace (hostname $PREFIX-hub, no ranks there): every centre's daemon is then
  # started by the agent, and reaches mpirun over its link at $HUB_ADDR. Ranks use TCP only (no shared memory
  # across "nodes"); both the runtime's out-of-band channel and MPI traffic are pinned to the testbed subnet.
  local rc=0
  ip netns exec "$HUB_NS" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$PREFIX-hub" \
    mpirun --allow-run-as-root --oversubscribe --bind-to none \
    --hostfile "$tmp/hostfile" --map-by slot -np "$np" \
    --mca plm_rsh_agent "$AGENT" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET" \
    "${mcas[@]}" "${envflags[@]}" "$@" || rc=$?
  return $rc
}

# ---------------------------------------------------------------------------------------------------------
PREFIX=aqc
PREFIX_FLAG=""
CMD=${1:-}
[[ -n $CMD ]] || die 2 "usage: $ME up|run|bytes|throughput|status|down ... (see the header of $0)"
shift
case $CMD in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  run) cmd_run "$@" ;;
  bytes) cmd_bytes "$@" ;;
  status) cmd_status "$@" ;;
  throughput) cmd_throughput "$@" ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die 2 "unknown command '$CMD': use up, run, bytes, throughput, status or down (see the header of $0)" ;;
esac
