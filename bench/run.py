#!/usr/bin/env python3
"""hotlead's benchmark harness: one broker, one Redis, one backlog, several systems.

Started by scripts/bench.sh, which installs what it needs first. In one run:

1. a Tansu broker and a redis-server on 127.0.0.1 (free ports, state in
   target/bench/), the topics, and a preloaded backlog (`hotlead-bench load`:
   seeded Zipf activity over the contacts, event times spread over 30 days);
2. each system drains the backlog in turn: the consume-only ceiling
   (`hotlead-bench ceiling`), hotlead, the Python peer (confluent-kafka +
   redis-py) and the Quix Streams peer (bench/peers/). For each: events per
   second, the scorer's CPU seconds and Redis's CPU seconds (INFO, before and
   after) per million events, the scorer's peak memory (getrusage of the
   child), and Redis memory per contact and model after the run. Every
   system's scores are checked against the oracle (`hotlead-bench verify`);
3. open loop at half of hotlead's measured rate, each system on a topic of its
   own: event-to-alert latency p50 / p99 / p99.9, from the event time carried
   in the event to the alert's arrival (`hotlead-bench latency`).

Results go to bench/results/ as Markdown and JSON; the table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "bench" / "rules.yaml"
HOTLEAD = ROOT / "target" / "release" / "hotlead"
BENCH = ROOT / "target" / "release" / "hotlead-bench"
INPUT, ALERTS = "interactions", "sales-alerts"
SYSTEMS = ["ceiling", "hotlead", "python", "quix"]
LABELS = {
    "ceiling": "consume + decode only (ceiling)",
    "hotlead": "hotlead",
    "python": "Python peer (confluent-kafka + redis-py)",
    "quix": "Quix Streams peer",
}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: {what} did not start on port {port}")


class Redis:
    """A redis-server of the run's own, spoken to with redis-cli."""

    def __init__(self, work: Path):
        self.port = free_port()
        (work / "redis").mkdir()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(work / "redis")],
            stdout=open(work / "redis.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True,
                              capture_output=True, text=True).stdout

    def info(self) -> dict[str, str]:
        out = {}
        for line in self.cli("INFO").splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v.strip()
        return out

    def cpu(self) -> float:
        i = self.info()
        return float(i["used_cpu_sys"]) + float(i["used_cpu_user"])

    def memory(self) -> int:
        return int(self.info()["used_memory"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Broker:
    """A Tansu broker with SQLite storage."""

    def __init__(self, work: Path):
        self.port = free_port()
        (work / "tansu").mkdir()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "sqlite://tansu.db"],
            cwd=work / "tansu", stdout=open(work / "tansu.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_port(self.port, "tansu")
        self.brokers = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def wait4(proc: subprocess.Popen, timeout: float) -> tuple[int, float, int]:
    """Waits for a child; returns (exit code, CPU seconds, peak RSS in KiB)."""
    deadline = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        if time.time() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return -9, ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        time.sleep(0.02)


def bench_json(args: list[str], brokers: str, topic: str = INPUT, timeout: float = 900) -> dict:
    out = subprocess.run([str(BENCH), "--brokers", brokers, "--topic", topic, *args], check=True,
                         capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def hotlead_config(work: Path, name: str, brokers: str, redis: Redis, topic: str, http_port: int,
                   fetch_wait_ms: int) -> Path:
    path = work / f"{name}.toml"
    path.write_text(f"""[kafka]
"bootstrap.servers" = "{brokers}"
"group.id" = "bench-{name}"
"fetch.wait.max.ms" = "{fetch_wait_ms}"

[topics]
input = "{topic}"
alerts = "{ALERTS}"

[redis]
url = "{redis.url}"

[rules]
path = "{RULES}"

[http]
listen = "127.0.0.1:{http_port}"
""")
    return path


def hotlead_drained(redis: Redis, topic: str, ends: dict[int, int]) -> bool:
    for p, high in ends.items():
        if high == 0:
            continue
        wm = redis.cli("GET", f"hl:{{{topic}:{p}}}:wm").strip()
        if not wm or int(wm) < high - 1:
            return False
    return True


def peer_command(system: str, args, brokers: str, redis: Redis, topic: str, group: str, work: Path) -> list[str]:
    script = ROOT / "bench" / "peers" / ("python_peer.py" if system == "python" else "quix_peer.py")
    return [args.python, str(script), "--brokers", brokers, "--topic", topic, "--group", group,
            "--redis-url", redis.url, "--prefix", f"bench:{system}", "--alerts-topic", ALERTS,
            "--rules", str(RULES), "--proto-out", str(work / f"proto-{system}"),
            "--fetch-wait-ms", str(args.fetch_wait_ms)]


def pattern(system: str) -> str:
    return "hl:*:c:*" if system == "hotlead" else f"bench:{system}:c:*"


def first_key_time(redis: Redis, proc: subprocess.Popen, timeout: float = 120) -> float | None:
    """When the system wrote its first state to Redis (its start-up excluded)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if int(redis.cli("DBSIZE").strip() or 0) > 0:
            return time.time()
        time.sleep(0.01)
    return None


def drain(system: str, args, work: Path, broker: Broker, redis: Redis, ends: dict[int, int], events: int) -> dict:
    log(f"{system}: draining the backlog ...")
    redis.cli("FLUSHALL")
    mem0, cpu0 = redis.memory(), redis.cpu()
    if system == "ceiling":
        started = time.time()
        r = bench_json(["ceiling", "--group", "bench-ceiling", "--fetch-wait-ms", str(args.fetch_wait_ms)],
                       broker.brokers)
        return {"events_per_second": r["events"] / r["seconds"], "seconds": r["seconds"],
                "cpu_seconds": r["cpu_seconds"], "events": r["events"], "redis_cpu_seconds": 0.0,
                "peak_rss_mib": None, "check": {"ok": True, "note": "reads only"}, "wall": time.time() - started}
    logf = open(work / f"{system}.log", "w")
    if system == "hotlead":
        http = free_port()
        cfg = hotlead_config(work, "hotlead", broker.brokers, redis, INPUT, http, args.fetch_wait_ms)
        proc = subprocess.Popen([str(HOTLEAD), "run", "-c", str(cfg)], stdout=logf, stderr=subprocess.STDOUT)
        t0 = first_key_time(redis, proc)
        deadline = time.time() + args.timeout
        while not hotlead_drained(redis, INPUT, ends):
            if proc.poll() is not None or time.time() > deadline:
                sys.exit(f"bench: hotlead stopped or timed out before draining; see {work / 'hotlead.log'}")
            time.sleep(0.02)
        t1 = time.time()
        proc.send_signal(signal.SIGTERM)
        code, cpu, rss = wait4(proc, 60)
    else:
        cmd = peer_command(system, args, broker.brokers, redis, INPUT, f"bench-{system}", work) + ["--until-drained"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True)
        t0 = first_key_time(redis, proc)
        code, cpu, rss = wait4(proc, args.timeout)
        t1 = time.time()
        if code != 0:
            sys.exit(f"bench: {system} peer exited with {code}; see {work / (system + '.log')}")
    if t0 is None:
        sys.exit(f"bench: {system} wrote nothing to Redis; see {work / (system + '.log')}")
    redis_cpu = redis.cpu() - cpu0
    check = bench_json(["verify", "--rules", str(RULES), "--redis", redis.url, "--pattern", pattern(system)],
                       broker.brokers)
    contacts = check["contacts_checked"]
    mem = redis.memory() - mem0
    log(f"{system}: {events / (t1 - t0):,.0f} events/s, check {'ok' if check['ok'] else 'FAILED'}")
    return {"events_per_second": events / (t1 - t0), "seconds": t1 - t0, "cpu_seconds": cpu,
            "redis_cpu_seconds": redis_cpu, "peak_rss_mib": rss / 1024, "events": events,
            "redis_bytes_per_contact_model": mem / contacts if contacts else None, "check": check}


def latency(system: str, args, work: Path, broker: Broker, redis: Redis, rate: float) -> dict:
    topic = f"latency-{system}"
    log(f"{system}: open loop at {rate:,.0f} events/s for {args.latency_seconds:.0f} s on {topic} ...")
    subprocess.run([str(HOTLEAD), "topics", "--brokers", broker.brokers, "--partitions", str(args.partitions)],
                   check=True, capture_output=True, env={**os.environ, "HOTLEAD_TOPICS__INPUT": topic})
    if system == "ceiling":
        # The broker alone: each event timed from its event time to its
        # arrival at a consumer (one hop; an alert takes two).
        r = bench_json(["latency", "--echo", "--rate", str(rate), "--seconds", str(args.latency_seconds),
                        "--contacts", str(args.contacts), "--label", "echo"], broker.brokers, topic)
        log(f"broker one hop: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms")
        return r
    logf = open(work / f"{system}-latency.log", "w")
    if system == "hotlead":
        http = free_port()
        cfg = hotlead_config(work, "hotlead-latency", broker.brokers, redis, topic, http, args.fetch_wait_ms)
        proc = subprocess.Popen([str(HOTLEAD), "run", "-c", str(cfg)], stdout=logf, stderr=subprocess.STDOUT)
    else:
        cmd = peer_command(system, args, broker.brokers, redis, topic, f"bench-{system}-latency", work)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logf)
    # Warm up: a few events, so that the group has formed before the load.
    deadline = time.time() + 60
    for attempt in range(1000):
        warm = bench_json(["latency", "--alerts-topic", ALERTS, "--rate", "50", "--seconds", "3", "--seed",
                           str(1000 + attempt), "--label", f"warm-{system}-{attempt}", "--drain-seconds", "1"],
                          broker.brokers, topic)
        if warm["alerts"] > 0 or time.time() > deadline or proc.poll() is not None:
            break
    r = bench_json(["latency", "--alerts-topic", ALERTS, "--rate", str(rate), "--seconds",
                    str(args.latency_seconds), "--contacts", str(args.contacts), "--label", f"lat-{system}"],
                   broker.brokers, topic)
    proc.send_signal(signal.SIGTERM)
    wait4(proc, 60)
    log(f"{system}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms over {r['alerts']} alerts")
    return r


def fmt(v, spec: str = ",.0f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def report(results: dict) -> str:
    s = results["systems"]
    rows = []
    for name in results["order"]:
        r = s[name]
        m = 1e6 / r["events"]
        lat = r.get("latency") or {}
        rows.append("| {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |".format(
            LABELS[name], fmt(r["events_per_second"]),
            fmt(100 * r["events_per_second"] / s["ceiling"]["events_per_second"], ".0f") + " %",
            fmt(r["cpu_seconds"] * m, ".2f"), fmt(r["redis_cpu_seconds"] * m if name != "ceiling" else None, ".2f"),
            fmt(r["peak_rss_mib"], ",.0f"), fmt(lat.get("p50_ms")), fmt(lat.get("p99_ms")), fmt(lat.get("p999_ms")),
            fmt(r.get("redis_bytes_per_contact_model"), ",.0f"),
            "ok" if r["check"]["ok"] else "FAILED ({} of {} differ)".format(
                r["check"].get("mismatched"), r["check"].get("contacts_checked"))))
    p = results["params"]
    lines = [
        f"# hotlead benchmark, {results['date']}",
        "",
        f"Machine: {results['machine']}. Broker: Tansu 0.6.0 (SQLite), redis-server {results['redis_version']}, "
        "both on 127.0.0.1.",
        f"Backlog: {p['events']:,} events over {p['contacts']:,} contacts (Zipf), {p['partitions']} partitions; "
        f"rules: bench/rules.yaml. Latency: open loop at {fmt(results['latency_rate'])} events/s "
        f"(half of hotlead's rate) for {p['latency_seconds']:.0f} s per system.",
        f"Command: `{results['command']}`",
        "",
        "| system | events/s | of ceiling | scorer CPU s / 1M events | Redis CPU s / 1M events | peak RSS MiB "
        "| event-to-alert p50 / p99 / p99.9 ms (ceiling: the broker's one hop) | Redis bytes / contact-model "
        "| oracle check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "## Targets",
        "",
        *[f"- {t['target']}: {t['measured']} — {'holds' if t['holds'] else 'does not hold'}"
          for t in results["targets"]],
        "",
    ]
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    s = results["systems"]
    out = []
    h = s.get("hotlead")
    if not h:
        return out
    per_cpu = lambda r: r["events"] / r["cpu_seconds"] if r["cpu_seconds"] else None  # noqa: E731
    if "ceiling" in s:
        ratio = h["events_per_second"] / s["ceiling"]["events_per_second"]
        out.append({"target": "throughput >= 90 % of the consume-only ceiling", "measured": f"{ratio:.0%}",
                    "holds": ratio >= 0.9})
    if "python" in s:
        ratio = per_cpu(h) / per_cpu(s["python"])
        out.append({"target": ">= 10x the Python peer's events per scorer CPU-second", "measured": f"{ratio:.1f}x",
                    "holds": ratio >= 10})
    if "quix" in s:
        ahead = h["events_per_second"] / s["quix"]["events_per_second"]
        out.append({"target": "ahead of Quix Streams (events/s)", "measured": f"{ahead:.1f}x", "holds": ahead > 1})
    us = h["cpu_seconds"] / h["events"] * 1e6
    out.append({"target": "scorer <= 2 µs CPU per event", "measured": f"{us:.2f} µs", "holds": us <= 2})
    rus = h["redis_cpu_seconds"] / h["events"] * 1e6
    out.append({"target": "Redis <= 3 µs CPU per event", "measured": f"{rus:.2f} µs", "holds": rus <= 3})
    lat = h.get("latency") or {}
    if lat.get("p99_ms") is not None:
        out.append({"target": "p99 event-to-alert <= 25 ms at half load", "measured": f"{lat['p99_ms']:.0f} ms",
                    "holds": lat["p99_ms"] <= 25})
    b = h.get("redis_bytes_per_contact_model")
    if b is not None:
        out.append({"target": "Redis <= 150 bytes per contact per model", "measured": f"{b:.0f} bytes",
                    "holds": b <= 150})
    out.append({"target": "every system's scores equal the oracle's", "measured": ", ".join(
        f"{n}: {'ok' if s[n]['check']['ok'] else 'FAILED'}" for n in results["order"]),
        "holds": all(s[n]["check"]["ok"] for n in results["order"])})
    return out


def command_args() -> list[str]:
    """This run's flags as given to scripts/bench.sh."""
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--python":
            skip = True
        elif not a.startswith("--python="):
            out.append(a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="backlog size (default 1,000,000)")
    ap.add_argument("--contacts", type=int, default=100_000, help="contacts (default 100,000)")
    ap.add_argument("--partitions", type=int, default=8, help="input partitions (default 8)")
    ap.add_argument("--latency-seconds", type=float, default=15, help="open-loop phase per system (default 15)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {','.join(SYSTEMS)}")
    ap.add_argument("--no-latency", action="store_true", help="skip the open-loop phase")
    ap.add_argument("--fetch-wait-ms", type=int, default=10,
                    help="fetch.wait.max.ms of every system's consumer (Tansu holds each fetch this long; default 10)")
    ap.add_argument("--timeout", type=float, default=900, help="longest drain per system, seconds")
    ap.add_argument("--python", default=sys.executable, help="Python for the peers")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    args = ap.parse_args()
    order = [s for s in SYSTEMS if s in args.systems.split(",")]
    if "ceiling" not in order:
        order.insert(0, "ceiling")
    for tool in ("tansu", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found; scripts/bench.sh installs it")
    for b in (HOTLEAD, BENCH):
        if not b.exists():
            sys.exit(f"bench: {b} not built; run scripts/bench.sh")

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    work = ROOT / "target" / "bench" / stamp
    work.mkdir(parents=True)
    log(f"working in {work}")
    broker, redis = Broker(work), Redis(work)
    try:
        subprocess.run([str(HOTLEAD), "topics", "--brokers", broker.brokers, "--partitions", str(args.partitions)],
                       check=True, capture_output=True)
        log(f"loading {args.events:,} events over {args.contacts:,} contacts ...")
        loaded = bench_json(["load", "--events", str(args.events), "--contacts", str(args.contacts)], broker.brokers)
        log(f"loaded in {loaded['seconds']:.1f} s")
        ends = {int(p): h for p, h in bench_json(["ends"], broker.brokers).items()}
        if sum(ends.values()) != args.events:
            sys.exit(f"bench: the backlog holds {sum(ends.values())} events, not {args.events}")
        results = {"date": stamp, "machine": machine(), "order": order, "systems": {},
                   "params": vars(args) | {"load_seconds": loaded["seconds"]},
                   "redis_version": redis.info().get("redis_version", "?"),
                   "command": " ".join(["scripts/bench.sh", *command_args()])}
        for system in order:
            results["systems"][system] = drain(system, args, work, broker, redis, ends, args.events)
        rate = results["systems"].get("hotlead", results["systems"]["ceiling"])["events_per_second"] / 2
        results["latency_rate"] = rate
        if not args.no_latency:
            for system in order:
                redis.cli("FLUSHALL")
                results["systems"][system]["latency"] = latency(system, args, work, broker, redis, rate)
        results["targets"] = targets(results)
    finally:
        redis.stop()
        broker.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = report(results)
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stamp}.md").write_text(md)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(md)
    log(f"results in {out / (stamp + '.md')} and .json")
    return 0 if all(r["check"]["ok"] for r in results["systems"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
