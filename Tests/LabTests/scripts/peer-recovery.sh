#!/bin/sh
# Lab guest script for the peer-protocol tests (Tests/LabTests/PeerRecoveryLabTests.swift): an
# unmodified RDMA program runs through the shim while this guest's device goes away and comes back.
#
#   peer-recovery.sh server|client|both  PROGRAM  ITERATIONS  LOSSES  HOW
#     server   run PROGRAM's server side (two guests; the peer guest moves)
#     client   run PROGRAM's client side against $STABLEVERBS_LAB_PEER and make this guest's device
#              go away LOSSES times while it runs
#     both     server and client in this guest (both ends move at once)
#     HOW      delete (rdma link delete/add) or nic (hot-unplug the NIC, plug a new one, new MAC)
# Prints PEER-RESULT side=… rc=… iters=… recoveries=… and the programs' output.
set -u
ROLE=$1 PROG=$2 N=$3 LOSSES=$4 HOW=${5:-delete}
export STABLEVERBS_LOG=${STABLEVERBS_LOG:-info}
PORT=18750
OUT=${TMPDIR:-/tmp}/peer-recovery.$$
mkdir -p "$OUT"

run() {  # side peer-address-or-empty
  LD_PRELOAD=$STABLEVERBS_LIB $PROG -d rxe0 -g 1 -p $PORT -n "$N" $2 > "$OUT/$1.out" 2> "$OUT/$1.err"
  echo $? > "$OUT/$1.rc"
}

result() {  # side
  rc=$(cat "$OUT/$1.rc" 2>/dev/null || echo killed)
  iters=$(sed -n 's/^\([0-9][0-9]*\) iters in .*/\1/p' "$OUT/$1.out" | tail -1)
  recoveries=$(grep -c 'recovery #' "$OUT/$1.err")
  sed "s/^/$1: /" "$OUT/$1.out" "$OUT/$1.err" | grep -v ' bytes in \|^[a-z]*: *$'
  echo "PEER-RESULT side=$1 rc=$rc iters=${iters:-0} recoveries=$recoveries"
}

alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

lose() {  # while the given pids run: LOSSES times, the device goes and comes back
  k=0
  sleep 3
  while [ $k -lt "$LOSSES" ] && alive "$@"; do
    k=$((k+1))
    echo "peer-recovery: loss $k ($HOW)"
    if [ "$HOW" = nic ]; then lab-device nic-replace; else lab-device delete; sleep 0.3; lab-device add; fi
    sleep 4
  done
  echo "peer-recovery: $k loss(es) caused"
}

waitfor() {  # pids: bounded wait, then kill
  i=0
  while alive "$@" && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done
  alive "$@" && { echo "peer-recovery: killing $* after 180 s"; kill -9 "$@"; }
  wait "$@" 2>/dev/null
}

case "$ROLE" in
  server)
    run server "" &
    waitfor $!
    result server ;;
  client)
    sleep 1
    run client "$STABLEVERBS_LAB_PEER" &
    c=$!
    lose $c
    waitfor $c
    result client ;;
  both)
    run server "" &
    s=$!
    sleep 0.5
    run client 127.0.0.1 &
    c=$!
    lose $s $c
    waitfor $s $c
    result server
    result client ;;
esac
rm -rf "$OUT"
