# Summarizes `swift package benchmark --format markdown` output of the FastPath target: per op
# and mode, the p50 wall clock per op (one sample = 64 ops) through the shim and direct, and the
# median malloc count per 64 ops (and the largest seen in any sample).
/^### / { name = substr($0, 5); next }
/^\| (Malloc \(total\)|Time \(wall clock\))/ {
  n = split($0, f, "|"); p50 = f[5] + 0; p100 = f[9] + 0
  if ($0 ~ /Malloc/) { mal[name] = p50; malx[name] = p100 } else t[name] = p50
  next
}
END {
  printf "%-8s %-22s %10s %10s %10s %16s %16s\n", "mode", "op", "direct ns", "shim ns", "added ns", "direct mallocs", "shim mallocs"
  split("static moved", modes, " ")
  split("poll_cq empty|poll_cq 1 completion|post_send inline|post_send SGE|ibv_wr_* inline|ibv_wr_* SGE|post_recv|post_srq_recv", ops, "|")
  for (m = 1; m <= 2; m++) for (o = 1; o <= 8; o++) {
    d = modes[m] " " ops[o] " direct x64"; s = modes[m] " " ops[o] " shim x64"
    if (!(d in t)) continue
    printf "%-8s %-22s %10.1f %10.1f %10.1f %9d (max %d) %9d (max %d)\n", modes[m], ops[o], t[d] / 64, t[s] / 64, (t[s] - t[d]) / 64, mal[d], malx[d], mal[s], malx[s]
  }
}
