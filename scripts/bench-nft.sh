#!/bin/sh
# What an nftables transaction costs inside a task-like network namespace: one that only adds
# (a new namespace's tables, a task's first allowances) against one that deletes (replacing
# tables, flushing rules), each as one `nft -f` run. Deleting makes the kernel's commit wait
# for an RCU grace period. Run as root; makes and removes its own namespace.
#   sudo scripts/bench-nft.sh [RUNS]
set -eu
runs=${1:-30}
ns="gantry-nftbench-$$"
dir=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"' EXIT
ip netns add "$ns"
cat > "$dir/base.nft" <<'NFT'
table inet gantry_sg {
	chain allow_in {
	}
	chain input {
		type filter hook input priority filter; policy drop;
		iifname "lo" accept
		jump allow_in
	}
}
NFT
printf 'flush chain inet gantry_sg allow_in\nadd rule inet gantry_sg allow_in ip saddr { 10.1.0.5, 10.1.0.6 } tcp dport 80 accept\n' > "$dir/allow.nft"
printf 'add table inet gantry_sg\ndelete table inet gantry_sg\n' > "$dir/replace.nft"
cat "$dir/replace.nft" "$dir/base.nft" "$dir/allow.nft" > "$dir/whole.nft"
printf 'flush chain inet gantry_sg allow_in\n' > "$dir/empty.nft"
: > "$dir/none.nft"
python3 - "$ns" "$dir" "$runs" <<'PY'
import statistics, subprocess, sys, time
ns, d, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def nft(*args):
    subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True, stdout=subprocess.DEVNULL)
def timed(label, before, script):
    xs = []
    for _ in range(runs):
        if before:
            nft("-f", f"{d}/{before}")
        t0 = time.perf_counter()
        nft("-f", f"{d}/{script}")
        xs.append((time.perf_counter() - t0) * 1000)
    xs.sort()
    print(f"{label:<58} median {statistics.median(xs):6.2f} ms   p90 {xs[int(len(xs) * 0.9)]:6.2f} ms")
nft("-f", f"{d}/base.nft")
timed("an empty script (process and namespace entry only)", None, "none.nft")
timed("first allowances: flush empty chain + add (adds only)", "empty.nft", "allow.nft")
timed("allowances replaced: flush rules + add (deletes)", None, "allow.nft")
timed("tables replaced whole: delete + create + add (deletes)", None, "whole.nft")
PY
