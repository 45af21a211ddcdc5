#!/bin/sh
# Lab guest script: a device that never comes back (Tests/LabTests/RecoveryLabTests.swift).
# ibv_rc_pingpong's server and client run through the shim in this guest over rxe0 with
# STABLEVERBS_LOSS_WAIT_MS=3000; rxe0 is deleted and not added again. Each program must then end
# as on a dead device — its outstanding work completes in error and it exits with its own error —
# within 60 s, rather than wait for the device for ever. Prints "device-gone: ended after N s",
# "server-rc=N", "client-rc=N" and both programs' output and shim logs.
export STABLEVERBS_LOSS_WAIT_MS=3000 STABLEVERBS_LOG=info
OUT=${TMPDIR:-/tmp}/device-gone.$$
mkdir -p "$OUT"
LD_PRELOAD=$STABLEVERBS_LIB ibv_rc_pingpong -d rxe0 -g 1 -n 1000000 > "$OUT/s.out" 2> "$OUT/s.err" & s=$!
sleep 0.5
LD_PRELOAD=$STABLEVERBS_LIB ibv_rc_pingpong -d rxe0 -g 1 -n 1000000 127.0.0.1 > "$OUT/c.out" 2> "$OUT/c.err" & c=$!
# Once both shims have introduced the connection, and some iterations later.
i=0; while ! grep -q "introduced" "$OUT/s.err" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
sleep 2
t0=$(date +%s)
lab-device delete
end=$((t0 + 60))
while { kill -0 $s || kill -0 $c; } 2>/dev/null && [ "$(date +%s)" -lt $end ]; do sleep 0.2; done
echo "device-gone: ended after $(( $(date +%s) - t0 )) s"
kill -9 $s $c 2>/dev/null
wait $s; echo "server-rc=$?"
wait $c; echo "client-rc=$?"
sed 's/^/server: /' "$OUT/s.out" "$OUT/s.err"
sed 's/^/client: /' "$OUT/c.out" "$OUT/c.err"
rm -rf "$OUT"
