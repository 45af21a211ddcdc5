#!/usr/bin/env bash
# Instructions the shim adds per fast-path op, counted by valgrind's callgrind (repeatable on
# noisy machines): for each op, the driver (fastpath.c) runs twice under callgrind doing exactly
# the same work, except that the measured ops go through the virtual objects (shim) or through the
# real ones underneath (direct: the software HCA's own op, as native libibverbs would call it).
# Only the measured ops are counted (--toggle-collect=timed_ops: the driver's function that holds
# them, and everything it calls): Ir/op is an op's own cost, (Ir(shim) - Ir(direct)) / ops what
# the shim adds. With -m: after a rebuild (translation active).
# The software HCA is Swift: its dictionaries are seeded per process unless
# SWIFT_DETERMINISTIC_HASHING is set, which it is here.
#
#   Benchmarks/fastpath/callgrind.sh [-m] [-j JSON] [-n BATCHES] [LIB]
#
# -j appends one JSON object per op to JSON. BATCHES (default 40) of 256 ops per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
moved= json= batches=40
while getopts mj:n: o; do
  case $o in
    m) moved=-m ;;
    j) json=$OPTARG ;;
    n) batches=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
lib=${1:-$PWD/.build/release/libstableverbs.so}
[[ -f "$lib" ]] || { echo "no $lib: build it (swift build -c release -Xswiftc -static-stdlib --omit-frame-pointers --product stableverbs)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -Wall -I include -o "$work/fastpath" Benchmarks/fastpath/fastpath.c -libverbs -ldl
# valgrind 3.19 cannot read the DWARF 5 the Swift toolchain emits: count on a copy without it
objcopy --strip-debug "$lib" "$work/libstableverbs.so"
lib=$work/libstableverbs.so
ops=$((batches * 256))
total() {  # op target
  SWIFT_DETERMINISTIC_HASHING=1 STABLEVERBS_LOWER=softhca STABLEVERBS_SOFTHCA=devices=1 LD_PRELOAD="$lib" \
    valgrind --tool=callgrind --toggle-collect="timed_ops*" --callgrind-out-file="$work/cg.out" "$work/fastpath" $moved -n "$batches" -o "$1" -t "$2" >/dev/null 2>"$work/vg.log" \
    || { cat "$work/vg.log" >&2; exit 1; }
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$work/cg.out"
}
mode=$([[ -n $moved ]] && echo moved || echo static)
printf '%-18s %14s %14s %12s %10s   (%s, %d ops each; valgrind --tool=callgrind)\n' op "direct Ir/op" "shim Ir/op" "added Ir/op" "shim calls" \
  "$([[ -n $moved ]] && echo "after a rebuild" || echo "nothing moved")" "$ops"
for op in poll_empty poll_one post_send_inline post_send_sge wr_inline wr_sge post_recv post_srq_recv poll_ex_empty poll_ex_one; do
  d=$(total "$op" direct); s=$(total "$op" shim)
  # shim entry points per op: the ibv_wr_* sequence is wr_start, wr_rdma_write, one setter,
  # wr_complete; an extended poll of one completion is start_poll, read_opcode, read_qp_num, end_poll
  calls=1; [[ $op == wr_* || $op == poll_ex_one ]] && calls=4
  awk -v op="$op" -v d="$d" -v s="$s" -v n="$ops" -v c="$calls" 'BEGIN{printf "%-18s %14.1f %14.1f %12.2f %10d\n", op, d/n, s/n, (s-d)/n, c}'
  if [[ -n $json ]]; then
    awk -v op="$op" -v d="$d" -v s="$s" -v n="$ops" -v c="$calls" -v m="$mode" \
      'BEGIN{printf "{\"suite\":\"callgrind\",\"mode\":\"%s\",\"op\":\"%s\",\"direct_ir_total\":%d,\"shim_ir_total\":%d,\"ops\":%d,\"added_ir_per_op\":%.2f,\"shim_calls_per_op\":%d}\n", m, op, d, s, n, (s-d)/n, c}' >>"$json"
  fi
done
