#!/usr/bin/env bash
# What the seccomp profile's architectures cost a container start: `crun run` of /bin/true with
# Gantry's default profile for x86_64 only, x86_64+i386 (what Gantry uses) and x86_64+i386+x32
# (Docker's list), and with no seccomp at all, interleaved; and x86_64+i386 compiled beforehand
# (`gantry debug seccomp --bpf`, handed to crun as run.oci.seccomp_bpf_data, as Gantry does).
# Needs root and a built gantry.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-40}
G=${GANTRY:-target/release/gantry}
work=$(mktemp -d /var/tmp/gantry-bench-seccomp.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" && cp /bin/busybox "$work/rootfs/bin/" && ln -s busybox "$work/rootfs/bin/true"
"$G" debug seccomp > "$work/profile.json"
"$G" debug seccomp --bpf > "$work/profile.bpf64"
python3 - "$work" "$RUNS" <<'PY'
import json, os, statistics, subprocess, sys, time
work, runs = sys.argv[1], int(sys.argv[2])
profile = json.load(open(f"{work}/profile.json"))
subprocess.run(["crun", "spec"], cwd=work, check=True)
base = json.load(open(f"{work}/config.json"))
base["process"].update(args=["/bin/true"], terminal=False)
variants = {"none": None, "x86_64": ["SCMP_ARCH_X86_64"], "x86_64+i386 (crun compiles)": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "x86_64+i386+x32 (docker)": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "x86_64+i386 precompiled (gantry)": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]}
bpf = open(f"{work}/profile.bpf64").read().strip()
times = {}
for i, (name, archs) in enumerate(variants.items()):
    d = f"{work}/b{i}"
    os.makedirs(d)
    os.symlink(f"{work}/rootfs", f"{d}/rootfs")
    cfg = json.loads(json.dumps(base))
    if archs:
        cfg["linux"]["seccomp"] = dict(profile, architectures=archs)
    if "precompiled" in name:
        cfg["annotations"] = {"run.oci.seccomp_bpf_data": bpf}
    json.dump(cfg, open(f"{d}/config.json", "w"))
    times[name] = (d, [])
for n in range(runs):
    for name, (d, t) in times.items():
        began = time.perf_counter()
        # A private mount namespace without the hybrid cgroup2 mount crun refuses.
        subprocess.run(["unshare", "-m", "sh", "-c", f"umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle {d} bench-sc-{os.getpid()}-{n}"],
                       check=True, capture_output=True)
        t.append((time.perf_counter() - began) * 1000)
for name, (_, t) in times.items():
    t.sort()
    print(f"{name:33} n={len(t)} median {statistics.median(t):6.2f} ms  p90 {t[int(len(t) * 0.9)]:6.2f} ms")
PY
