#!/bin/sh
# Lab guest script for the peer-protocol tests (Tests/LabTests/PeerRecoveryLabTests.swift): an
# unmodified RDMA program runs through the shim while this guest's device goes away and comes back.
# PROGRAM is an rdma-core example (ibv_rc_pingpong, ibv_srq_pingpong, ibv_ud_pingpong: -g 1), a
# perftest latency test (ib_write_lat, ib_send_lat, ...: -x 1), or peer_atomics (the project's
# verifying workload of atomics across processes, Tests/Programs/peer_atomics.c, built here);
# ITERATIONS is its -n.
#
#   peer-recovery.sh server|client|both  PROGRAM  ITERATIONS  LOSSES  HOW
#     server   run PROGRAM's server side (two guests; the peer guest moves)
#     client   run PROGRAM's client side against $STABLEVERBS_LAB_PEER and make this guest's device
#              go away LOSSES times while it runs
#     both     server and client in this guest (both ends move at once)
#     HOW      delete (rdma link delete/add), nic (hot-unplug the NIC, plug a new one, new MAC),
#              renumber (as nic, and the new NIC has another IP address: every GID changes), or
#              pull (the NIC hot-unplugged with rxe0 still on it, as a VF pulled from under the
#              application: work in flight dies with the link; then a new NIC), or
#              planned (`stableverbs detach`, the device deleted and re-added, `stableverbs attach`);
#              a comma-separated list takes its ways in turn, one per loss (delete,nic,planned)
# With SERVER_DIES=1 the server's program is killed (-9) as soon as its shim hears that the peer is
# moving: the peer vanishes while the client is away, and the client must end as native verbs make
# it (error completions once its reconnection gives up), not hang. The client then takes
# PEER_DIES=1: its device returns only once the peer's shim is gone (its port refuses).
# With SERVER_LOSSES=K the server guest's device goes K times too (SERVER_HOW, default delete), the
# first SERVER_FIRST_LOSS_AFTER seconds (default 30) after the connection is up or, with
# SERVER_AFTER_PEER_MOVES=M, that many seconds (default 1) after the server's shim has followed
# the client's M-th move (logged "reconnected to the peer's new end"): an event, not a time, so
# that a fast machine does not finish the program before the server's loss.
# With NET_DELAY_MS=N this guest's NIC delays every packet it sends by N ms (netem): on the server,
# the responses to the client's requests are still on their way when the client's NIC is pulled
# (the server executed requests whose responses die with the client's device).
# With RELAY=1 the server's program exchanges addresses as an MPI rank does through its launcher's
# daemon: it holds a connection to a local "daemon" (socat on 127.0.0.1) for its whole run, and the
# client's exchange reaches it through a relay (socat from PORT to 127.0.0.1); none of the program's
# own connections leads to the client's host (only the relay's do).
# Prints PEER-RESULT side=… rc=… iters=… recoveries=… seconds=… (how long the program ran) and the programs' output.
set -u
ROLE=$1 PROG=$2 N=$3 LOSSES=$4 HOW=${5:-delete}
for w in $(echo "$HOW" | tr ',' ' '); do
  case "$w" in delete|nic|pull|renumber|planned) ;; *) echo "peer-recovery: unknown way $w (delete, nic, pull, renumber, planned)" >&2; exit 2 ;; esac
done
export STABLEVERBS_LOG=${STABLEVERBS_LOG:-info}
PORT=18750
EXE=$PROG
if [ -n "${NET_DELAY_MS:-}" ]; then
  for n in /sys/class/net/*; do
    [ -e "$n/device" ] || continue
    tc qdisc add dev "$(basename "$n")" root netem delay "${NET_DELAY_MS}ms" || { echo "peer-recovery: netem failed" >&2; exit 9; }
    echo "peer-recovery: $(basename "$n") delays what it sends by $NET_DELAY_MS ms"
  done
fi
if [ "$PROG" = peer_atomics ]; then
  EXE=${TMPDIR:-/tmp}/peer_atomics
  cc -O2 -o "$EXE" Tests/Programs/peer_atomics.c -libverbs || { echo "peer-recovery: cannot build peer_atomics" >&2; exit 9; }
fi
OUT=${TMPDIR:-/tmp}/peer-recovery.$$
mkdir -p "$OUT"

listening() {  # port: something in this guest listens on it
  ss -ltn | grep -q ":$1 "
}

launch() {  # side command...: runs the command (RELAY=1 server: holding its connection to the local daemon)
  launch_side=$1
  shift
  if [ "$launch_side" = server ] && [ "${RELAY:-0}" = 1 ]; then
    bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && exec "$@"' "$DAEMON_PORT" "$@"
  else
    "$@"
  fi
}

run() {  # side peer-address-or-empty; a client retries while the server is not listening yet
  tries=0
  date +%s > "$OUT/$1.start"
  port=$PORT
  [ "$1" = server ] && [ "${RELAY:-0}" = 1 ] && port=$PROG_PORT
  while :; do
    case "$PROG" in
      ib_*) gid="-x 1" ;;   # perftest
      *) gid="-g 1" ;;
    esac
    launch "$1" env LD_PRELOAD="$STABLEVERBS_LIB" $EXE -d rxe0 $gid -p $port -n "$N" ${PROG_ARGS:-} $2 > "$OUT/$1.out" 2> "$OUT/$1.err"
    rc=$?
    tries=$((tries+1))
    [ $rc != 0 ] && [ -n "$2" ] && [ $tries -lt 60 ] && grep -q "Couldn't connect\|Unable to open file descriptor" "$OUT/$1.out" "$OUT/$1.err" && { sleep 0.5; continue; }
    break
  done
  echo $rc > "$OUT/$1.rc"
}

elapsed() {  # side: seconds since its program started (to its end, or now if it was killed)
  start=$(cat "$OUT/$1.start" 2>/dev/null || date +%s)
  end=$(stat -c %Y "$OUT/$1.rc" 2>/dev/null || date +%s)
  echo $((end - start))
}

result() {  # side
  rc=$(cat "$OUT/$1.rc" 2>/dev/null || echo killed)
  case "$PROG" in
    ib_*) iters=$(awk '/#bytes *#iterations/ { getline; print $2; exit }' "$OUT/$1.out") ;;  # perftest's table
    *) iters=$(sed -n 's/^\([0-9][0-9]*\) iters in .*/\1/p' "$OUT/$1.out" | tail -1) ;;
  esac
  recoveries=$(grep -c 'recovery #' "$OUT/$1.err")
  sed "s/^/$1: /" "$OUT/$1.out" "$OUT/$1.err" | grep -v ' bytes in \|^[a-z]*: *$'
  echo "PEER-RESULT side=$1 rc=$rc iters=${iters:-0} recoveries=$recoveries seconds=$(elapsed $1)"
}

alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

recovered() {  # k sides...: every side's shim has logged its k-th recovery
  n=$1; shift
  for side in "$@"; do grep -q "recovery #$n " "$OUT/$side.err" 2>/dev/null || return 1; done
}

introduced() {  # sides...: every side's shim has introduced its connection to the peer shim
  # (UD has no connection: the shim has opened the device; the first loss comes later, below)
  case "$PROG" in *ud_*) pattern="info: opened " ;; *) pattern="peer: link .* introduced" ;; esac
  for side in "$@"; do grep -q "$pattern" "$OUT/$side.err" 2>/dev/null || return 1; done
}

followed() {  # side: how many times its shim has reconnected to the peer's new end after the peer moved
  n=$(grep -c "reconnected to the peer's new end" "$OUT/$1.err" 2>/dev/null)
  echo "${n:-0}"
}

way() {  # k: the way of the k-th loss (HOW's ways in turn)
  n=$(echo "$HOW" | tr ',' '\n' | grep -c .)
  echo "$HOW" | tr ',' '\n' | grep . | sed -n "$(( ($1 - 1) % n + 1 ))p"
}

lose() {  # sides -- pids: while the programs run, LOSSES times the device goes and comes back
  sides=
  while [ "$1" != -- ]; do sides="$sides $1"; shift; done
  shift
  k=0
  # The first loss once the connection is up (the shims have introduced themselves).
  i=0; while ! introduced $sides && alive "$@" && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  if [ -n "${AFTER_PEER_MOVES:-}" ]; then  # ... and once this side's shim has followed the peer's moves
    end=$(( $(date +%s) + ${WAITFOR:-3000} / 10 ))
    while [ "$(followed $sides)" -lt "$AFTER_PEER_MOVES" ] && alive "$@" && [ "$(date +%s)" -lt $end ]; do sleep 0.2; done
    echo "peer-recovery: $(elapsed $sides) s into the run: $(followed $sides) move(s) of the peer followed"
  fi
  case "$PROG" in *ud_*) first=4 ;; *) first=1 ;; esac
  sleep ${FIRST_LOSS_AFTER:-$first}
  while [ $k -lt "$LOSSES" ] && alive "$@"; do
    # The next loss only once the shims have come back from the previous one.
    i=0; while [ $k -gt 0 ] && ! recovered $k $sides && alive "$@" && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    sleep 1
    alive "$@" || break
    k=$((k+1))
    how=$(way $k)
    echo "peer-recovery: $(elapsed $sides) s into the run"
    echo "peer-recovery: loss $k ($how)"
    case "$how" in
      nic) lab-device nic-replace ;;
      pull) lab-device nic-pull && lab-device nic-plug ;;
      renumber) lab-device nic-renumber ;;
      planned) stableverbs detach && lab-device delete && sleep 0.3 && lab-device add && stableverbs attach ;;
      delete) lab-device delete; sleep 0.3; [ "${PEER_DIES:-0}" = 1 ] && peer_gone; lab-device add ;;
    esac
    sleep 1
  done
  echo "peer-recovery: $k loss(es) caused"
}

peer_gone() {  # the peer guest's shim (its program) has died: its peer port refuses connections
  # (waited for before this guest's device returns, so that the peer is gone while this side is
  # away however slowly the peer guest's script kills it)
  i=0
  while bash -c "exec 3<>/dev/tcp/$STABLEVERBS_LAB_PEER/${STABLEVERBS_PEER_PORT:-18800}" 2>/dev/null && [ $i -lt 600 ]; do
    sleep 0.2; i=$((i+1))
  done
  echo "peer-recovery: the peer's shim is gone ($((i / 5)) s after the loss); the device returns"
}

waitfor() {  # pids: wait at most WAITFOR tenths of a second by the clock (a count of short sleeps
  # runs much longer than it says under TCG), then kill the programs themselves (not only the
  # subshells that run them), so that their output and their shims' logs are shown
  end=$(( $(date +%s) + ${WAITFOR:-3000} / 10 ))
  while alive "$@" && [ "$(date +%s)" -lt $end ]; do sleep 0.2; done
  if alive "$@"; then
    echo "peer-recovery: killing $PROG after $((${WAITFOR:-3000} / 10)) s"
    pkill -9 -x "$PROG"
    kill -9 "$@" 2>/dev/null
  fi
  wait "$@" 2>/dev/null
}

dies_when_peer_moves() {  # pid: kill the program once its shim logged the peer's move announcement
  i=0
  while alive "$1" && [ $i -lt ${WAITFOR:-3000} ]; do
    if grep -q "announced that it is moving" "$OUT/server.err" 2>/dev/null; then
      pkill -9 -x "$PROG" && echo "peer-recovery: the server was killed while its peer moves"
      return
    fi
    sleep 0.1; i=$((i+1))
  done
}

case "$ROLE" in
  server)
    if [ "${RELAY:-0}" = 1 ]; then
      DAEMON_PORT=$((PORT + 2)) PROG_PORT=$((PORT + 1))
      socat -u TCP-LISTEN:$DAEMON_PORT,bind=127.0.0.1,reuseaddr,fork /dev/null &
      i=0; while ! listening $DAEMON_PORT && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    fi
    run server "" &
    s=$!
    if [ "${RELAY:-0}" = 1 ]; then  # the relay opens once the program listens (the client retries until then)
      i=0; while ! listening $PROG_PORT && alive $s && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
      socat TCP-LISTEN:$PORT,reuseaddr,fork TCP:127.0.0.1:$PROG_PORT &
      echo "peer-recovery: the server's exchange goes through a relay (port $PORT to 127.0.0.1:$PROG_PORT); it holds a connection to a local daemon on port $DAEMON_PORT"
    fi
    [ "${SERVER_DIES:-0}" = 1 ] && dies_when_peer_moves $s &
    if [ "${SERVER_LOSSES:-0}" -gt 0 ]; then  # this guest's device goes too (after the client's moves)
      LOSSES=$SERVER_LOSSES HOW=${SERVER_HOW:-delete} AFTER_PEER_MOVES=${SERVER_AFTER_PEER_MOVES:-}
      FIRST_LOSS_AFTER=${SERVER_FIRST_LOSS_AFTER:-30}
      [ -n "$AFTER_PEER_MOVES" ] && FIRST_LOSS_AFTER=${SERVER_FIRST_LOSS_AFTER:-1}
      lose server -- $s
    fi
    waitfor $s
    [ "${RELAY:-0}" = 1 ] && pkill -x socat
    result server ;;
  client)
    sleep 1
    run client "$STABLEVERBS_LAB_PEER" &
    c=$!
    lose client -- $c
    waitfor $c
    result client ;;
  both)
    run server "" &
    s=$!
    sleep 0.5
    run client 127.0.0.1 &
    c=$!
    lose server client -- $s $c
    waitfor $s $c
    result server
    result client ;;
esac
rm -rf "$OUT"
