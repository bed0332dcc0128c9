"""What the API benchmarks share: the node they start and the task they run, percentiles and
their summary line, waiting for tasks to run, the two launch patterns (one task at a time, a
burst of RunTask calls of 10), and the `crun run` baselines from scripts/bench.sh (one task's
start, and a burst's ceiling on this machine)."""
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import conftest  # noqa: E402  (the e2e harness starts and cleans up gantry)

# GANTRY_BINARY measures another build (an older commit's, built elsewhere) in the same way.
conftest.GANTRY = os.environ.get("GANTRY_BINARY") or os.path.join(conftest.ROOT, "target", "release", "gantry")

# The benchmarks' task: idles until asked to stop, then exits at once.
LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"


def bench_gantry(instance, pool=16):
    """A `gantry dev` (not started yet) with a warm pool of `pool` and no account quotas."""
    g = conftest.Gantry(instance=instance)
    g.env["GANTRY_WARM_POOL"] = str(pool)
    g.env.update(conftest.UNLIMITED)
    return g


def register_bench(ecs):
    """The "bench" family: one container running LOOP."""
    conftest.register(ecs, "bench", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])


def cpu_seconds(pid, thread_prefix=None):
    """CPU time (user + system) so far of process `pid`; with thread_prefix, of its threads
    named so only (Gantry's load balancer workers, not the rest of `gantry dev`)."""
    def ticks(stat_path):
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    if thread_prefix is None:
        return ticks(f"/proc/{pid}/stat") / os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().startswith(thread_prefix):
                    total += ticks(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # the thread ended
    return total / os.sysconf("SC_CLK_TCK")


def child_pids(pid):
    """The processes `pid` started (nginx's workers, for its master)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * p))]


def summary(name, ms, width=44):
    """Prints a sample's median and p90; returns them."""
    print(f"{name:<{width}} n={len(ms):<4} median {statistics.median(ms):8.1f} ms   p90 {pct(ms, 0.9):8.1f} ms")
    return statistics.median(ms), pct(ms, 0.9)


def histogram_totals(endpoint):
    """Sum and count of each labelled series of the start-phase and API-latency histograms,
    read from Gantry's /metrics: {(metric, labels): [sum, count]}."""
    import urllib.request
    text = urllib.request.urlopen(f"{endpoint}/metrics", timeout=10).read().decode()
    totals = {}
    for line in text.splitlines():
        m = re.match(r'(gantry_task_start_seconds|gantry_api_request_duration_seconds)_(sum|count)\{(.*)\} (\S+)$', line)
        if m:
            totals.setdefault((m.group(1), m.group(3)), [0.0, 0.0])[m.group(2) == "count"] = float(m.group(4))
    return totals


def phase_means(before, after):
    """Prints the mean of each series over what happened between two `histogram_totals`:
    where a start's time went, as the server and agent saw it (means, not medians: the
    histograms keep only sums and buckets)."""
    for key in sorted(after):
        metric, labels = key
        s, n = (a - b for a, b in zip(after[key], before.get(key, [0.0, 0.0])))
        wanted = metric == "gantry_task_start_seconds" or any(
            f'operation="{op}"' in labels for op in ("RunTask", "DescribeTasks"))
        if n > 0 and wanted:
            name = metric.removeprefix("gantry_").removesuffix("_seconds")
            print(f"  {name} {{{labels}}}: mean {s / n * 1000:.2f} ms over {int(n)}")


def wait_running(ecs, arns, timeout=120, poll=0.005):
    """Until every task is RUNNING; returns them as last described, by ARN."""
    pending, running = set(arns), {}
    deadline = time.time() + timeout
    while pending:
        assert time.time() < deadline, f"{len(pending)} tasks never reached RUNNING"
        for chunk in [list(pending)[i:i + 100] for i in range(0, len(pending), 100)]:
            for t in ecs.describe_tasks(cluster="default", tasks=chunk)["tasks"]:
                if t["lastStatus"] == "RUNNING":
                    pending.discard(t["taskArn"])
                    running[t["taskArn"]] = t
                elif t["lastStatus"] == "STOPPED":
                    raise AssertionError(f"task stopped: {t.get('stoppedReason')}")
        if pending:  # not after the poll that saw the last one RUNNING: that is the end
            time.sleep(poll)
    return running


def one_at_a_time(ecs, family, n, stamped=None, network=None, writes=None):
    """Client-observed RunTask -> RUNNING of n tasks, one at a time, in ms. With `stamped` (a
    list), also the time from sending RunTask to the task's own startedAt (ECS's "moved from
    PENDING to RUNNING"; one host, so one clock), which leaves out how often the client polls.
    With `writes` (a list), also how many times the node wrote the task's record on its way to
    RUNNING (its `version` then, less RunTask's: each write of the record bumps it)."""
    lat = []
    for _ in range(n):
        sent = time.time()
        t0 = time.perf_counter()
        created = conftest.run(ecs, "default", family, network)[0]
        arn = created["taskArn"]
        task = wait_running(ecs, [arn])[arn]
        lat.append((time.perf_counter() - t0) * 1000)
        if stamped is not None:
            stamped.append((task["startedAt"].timestamp() - sent) * 1000)
        if writes is not None:
            writes.append(task["version"] - created["version"])
        ecs.stop_task(cluster="default", task=arn)
        time.sleep(0.1)  # let the namespace pool refill between samples
    if lat:
        conftest.wait_stopped(ecs, "default", [arn])
    return lat


def machine_cpu_seconds():
    """CPU time every core spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuShares:
    """Where a burst's CPU went: named processes (their own threads, not their children), this
    client, and the whole machine, between `begin` and `end`. What is left of the machine's is
    the runtime's (crun, the shims, the tasks' processes) and the kernel's work for them."""

    def __init__(self, procs):
        self.procs = procs  # {name: [pid, ...]}

    def _now(self):
        mine = os.times()
        return {"machine": machine_cpu_seconds(), "client (this script)": mine.user + mine.system,
                **{k: sum(cpu_seconds(p) for p in pids) for k, pids in self.procs.items()}}

    def begin(self):
        self.start = self._now()

    def end(self):
        self.spent = {k: v - self.start[k] for k, v in self._now().items()}

    def report(self, n):
        """Prints the CPU each part spent per task of the burst, in ms."""
        machine = self.spent["machine"]
        parts = {k: v for k, v in self.spent.items() if k != "machine"}
        parts["the rest: runtime, shims, tasks, kernel"] = machine - sum(parts.values())
        print(f"  CPU per task: {machine / n * 1000:.1f} ms in all; " +
              "; ".join(f"{k} {v / n * 1000:.1f}" for k, v in parts.items()))


def burst(ecs, family, n, network=None, cpu=None):
    """Seconds for n tasks launched in RunTask calls of 10 to all be RUNNING (then stopped).
    `cpu` (CpuShares): measured from the first RunTask to all RUNNING."""
    if cpu:
        cpu.begin()
    t0 = time.perf_counter()
    arns = []
    for _ in range(n // 10):
        arns += [t["taskArn"] for t in conftest.run(ecs, "default", family, network, count=10)]
    wait_running(ecs, arns, timeout=600)
    took = time.perf_counter() - t0
    if cpu:
        cpu.end()
    for arn in arns:
        ecs.stop_task(cluster="default", task=arn)
    for chunk in [arns[i:i + 100] for i in range(0, len(arns), 100)]:
        conftest.wait_stopped(ecs, "default", chunk)
    return took


def crun_baseline(runs=30):
    """`crun run` of an equivalent bundle (scripts/bench.sh): (median, p90) in ms, or None
    after printing why not."""
    out = subprocess.run(["bash", os.path.join(conftest.ROOT, "scripts", "bench.sh")], env=dict(os.environ, RUNS=str(runs)),
                         capture_output=True, text=True)
    m = re.search(r"crun run \(baseline\)\s+n=\d+\s+median\s+([\d.]+) ms\s+p90\s+([\d.]+)", out.stdout)
    if not m:
        print("crun baseline failed:", out.stdout[-500:], out.stderr[-500:])
        return None
    return float(m.group(1)), float(m.group(2))


def crun_burst_baseline(n, parallel=3):
    """`crun run --detach` of n prepared bundles of the same long-running task, `parallel` at
    a time (scripts/bench.sh burst): the runtime alone, the ceiling of any burst on this
    machine. (crun tasks/s, Gantry's node runtime tasks/s, crun's ms of CPU per task) over two
    rounds each, or None after printing why not."""
    out = subprocess.run(["bash", os.path.join(conftest.ROOT, "scripts", "bench.sh"), "burst", "--tasks", str(n),
                          "--parallel", str(parallel), "--rounds", "2"], capture_output=True, text=True)
    c = re.search(r"crun run --detach\s+n=\d+\s+median\s+([\d.]+) tasks/s", out.stdout)
    g = re.search(r"gantry node tasks\s+n=\d+\s+median\s+([\d.]+) tasks/s", out.stdout)
    cpu = re.search(r"crun\s+median\s+([\d.]+) ms of CPU per task", out.stdout)
    if not (c and g and cpu):
        print("crun burst baseline failed:", out.stdout[-500:], out.stderr[-500:])
        return None
    return float(c.group(1)), float(g.group(1)), float(cpu.group(1))


def report_burst_ceiling(n, rate, what):
    """Prints the same burst of n by `crun run --detach` alone, three at a time
    (`crun_burst_baseline`), and `what`'s burst `rate` (tasks/s) as a share of it."""
    ceiling = crun_burst_baseline(n, parallel=3)
    if ceiling:
        print(f"the same burst by crun run --detach alone, 3 at a time: {ceiling[0]:.1f} tasks/s "
              f"(Gantry's node runtime alone: {ceiling[1]:.1f}); {what} is {rate / ceiling[0]:.2f}x of crun's; "
              f"crun alone costs {ceiling[2]:.1f} ms of CPU per task, {os.cpu_count() * 1000 / ceiling[2]:.0f} "
              f"tasks/s with all {os.cpu_count()} cores busy and nothing else running")
