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
   child), and Redis memory per contact and model after the run. hotlead is
   done when its consumer group has committed the end of every partition
   (`hotlead-bench drained`). Every system's scores are checked against the
   oracle (`hotlead-bench verify`);
3. open loop, each system on a topic of its own, at fixed low rates (1,000
   and 5,000 events/s; `--latency-rates`) and at half of hotlead's measured
   rate: event-to-alert latency p50 / p99 / p99.9, from the event time
   carried in the event to the alert's arrival (`hotlead-bench latency`).
   The broker alone is measured over one hop at half load (`--echo`; the
   ceiling row of the main table) and, at every rate, over the two hops an
   alert takes (`--relay`: input topic -> pass-through -> output topic ->
   consumer). A system's own share is its latency minus the broker's two
   hops at the same rate. `--no-latency` skips the phase;
4. scaling: hotlead drains `--events` events over 10,000, 100,000 and
   1,000,000 contacts (`--scaling-contacts`), each population from a backlog
   topic of its own (the main backlog stands in for its own population):
   events/s, peak RSS, Redis bytes per contact-model and the oracle check,
   and Redis projected for 10M contacts x 2 models (bytes per contact-model
   x 10,000,000 x 2). `--scaling-peers` adds the peers; `--no-scaling` skips
   the phase;
5. back-fill (`--backfill-rates`): hotlead drains the backlog beside a
   `hotlead backfill` at each rate limit;
6. accounts (`--accounts` / `--no-accounts`): hotlead drains the backlog
   without account models, then with bench/rules-accounts.yaml (the same
   model with an account roll-up; both stages in one process), then with
   the stages apart (`pipeline.stages`): the contact stage alone, then the
   account stage alone over the contributions it sent. The contact stage's
   events/s against the run without, when the account stage has caught up
   (its watermarks reach the contribution topic's end offsets) and its
   contributions/s, contributions per event, CPU seconds of hotlead, Redis
   and the broker, Redis memory of the account keys, and the contacts'
   oracle check.

Then the targets, each with its measured figure and whether it holds.

`--quick` is the regression guard: the default backlog (1,000,000 events
over 100,000 contacts, so that bytes per contact-model are measured where
the target is set), the ceiling and hotlead only, no latency, no scaling,
no back-fill and no accounts phase unless asked for; it exits non-zero when
hotlead drains under GUARD_MIN_OF_CEILING of the ceiling or Redis holds more
than GUARD_MAX_BYTES per contact-model (or an oracle check fails).

Results go to bench/results/ as Markdown and JSON (`--quick`: to the run's
directory under target/bench/); the report is printed.
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
RULES_V2 = ROOT / "bench" / "rules-v2.yaml"  # the model the back-fill phase scores beside the live one
RULES_ACCOUNTS = ROOT / "bench" / "rules-accounts.yaml"  # bench/rules.yaml with an account roll-up
BACKFILL_DEFAULT_RATE = 3_000  # `hotlead backfill --max-rate` by default (src/shadow.rs)
TARGET_BACKFILL_SHARE = 0.80  # the live drain beside a back-fill at its default rate, at least this share of alone
# With account models (both stages in one process), the contact stage's drain, at least this share of its drain
# without them: account roll-ups cost the contact stage at most a quarter of its rate on the benchmark's machine.
TARGET_ACCOUNTS_SHARE = 0.75
# Where cargo puts the binaries (scripts/bench.sh builds them; CARGO_TARGET_DIR is honoured).
BUILD = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"
HOTLEAD = BUILD / "hotlead"
BENCH = BUILD / "hotlead-bench"
INPUT, ALERTS = "interactions", "sales-alerts"
# The accounts phase's contribution topics (both stages in one process; the stages run apart) and its account
# alert topic.
CONTRIBUTIONS, CONTRIBUTIONS_APART = "bench-contributions", "bench-contributions-apart"
ACCOUNT_ALERTS = "bench-account-alerts"
SYSTEMS = ["ceiling", "hotlead", "python", "quix"]
# Latency: the fixed rates (events/s), beside half of hotlead's rate.
FIXED_RATES = [1_000, 5_000]
# Scaling: the contact populations, each drained from --events events.
SCALING_CONTACTS = [10_000, 100_000, 1_000_000]
# Redis projected for this many contacts and models.
PROJECTED_CONTACTS, PROJECTED_MODELS = 10_000_000, 2

# The regression guard (--quick): its backlog and its two thresholds. The
# backlog is the default benchmark's: with fewer contacts the per-partition
# structures (recent alerts, vocabularies, watermarks) weigh on fewer of
# them, and bytes per contact-model are no longer those the target is for.
QUICK_EVENTS, QUICK_CONTACTS = 1_000_000, 100_000
GUARD_MIN_OF_CEILING = 0.85  # hotlead's events/s, at least this share of the ceiling's
GUARD_MAX_BYTES = 250  # Redis bytes per contact-model, at most

# The targets (see targets()).
TARGET_MAX_BYTES = 250  # Redis bytes per contact-model, and below both peers
TARGET_MAX_RSS_MIB = 150  # peak RSS, every population
TARGET_MAX_CPU_US = 2.5  # scorer CPU µs per event
TARGET_VS_PYTHON = 4.0  # events per scorer CPU-second, times the Python peer's
TARGET_OF_CEILING = 0.95  # events/s, share of the ceiling's
TARGET_MAX_SHARE_P99_MS = 10.0  # own share of event-to-alert p99 at each fixed rate

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

    def cpu(self) -> float:
        """The broker's CPU seconds so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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
                   fetch_wait_ms: int, rules: Path = RULES, contributions: str | None = None,
                   stages: str = "all") -> Path:
    # Offsets are committed every 100 ms (default 1 s), so that the group's
    # committed offsets, which tell the harness that hotlead is done, follow
    # closely behind. `contributions`: the accounts phase's contribution topic (with its account alert topic).
    account_topics = (f'account_contributions = "{contributions}"\naccount_alerts = "{ACCOUNT_ALERTS}"\n'
                      if contributions else "")
    path = work / f"{name}.toml"
    path.write_text(f"""[kafka]
"bootstrap.servers" = "{brokers}"
"group.id" = "bench-{name}"
"fetch.wait.max.ms" = "{fetch_wait_ms}"
"auto.commit.interval.ms" = "100"

[topics]
input = "{topic}"
alerts = "{ALERTS}"
{account_topics}
[redis]
url = "{redis.url}"

[rules]
path = "{rules}"

[pipeline]
stages = "{stages}"

[http]
listen = "127.0.0.1:{http_port}"
""")
    return path


def start_hotlead(work: Path, name: str, broker: Broker, redis: Redis, topic: str, fetch_wait_ms: int,
                  logf, **config) -> subprocess.Popen:
    """`hotlead run`; `config`: hotlead_config's rules, contributions and stages."""
    cfg = hotlead_config(work, name, broker.brokers, redis, topic, free_port(), fetch_wait_ms, **config)
    return subprocess.Popen([str(HOTLEAD), "run", "-c", str(cfg)], stdout=logf, stderr=subprocess.STDOUT)


def wait_drained(proc: subprocess.Popen, broker: Broker, topic: str, group: str, timeout: float,
                 logfile: Path) -> float:
    """Waits until `group` has committed the end of `topic`; returns when (time.time())."""
    waiter = subprocess.Popen([str(BENCH), "--brokers", broker.brokers, "--topic", topic, "drained", "--group", group,
                               "--timeout", str(timeout)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while waiter.poll() is None:
        if proc.poll() is not None:
            waiter.kill()
            waiter.wait()
            sys.exit(f"bench: hotlead stopped before draining {topic}; see {logfile}")
        time.sleep(0.01)
    done = time.time()
    if waiter.returncode != 0:
        sys.exit(f"bench: hotlead did not drain {topic}: {waiter.stderr.read().strip()}; see {logfile}")
    return done


def make_topic(broker: Broker, partitions: int, topic: str, contributions: str = CONTRIBUTIONS) -> None:
    """Creates `topic` (with hotlead's alert topics, and `contributions` and the account alert topic of the
    accounts phase, all of `partitions`) through `hotlead topics`."""
    subprocess.run([str(HOTLEAD), "topics", "--brokers", broker.brokers, "--partitions", str(partitions)],
                   check=True, capture_output=True,
                   env={**os.environ, "HOTLEAD_TOPICS__INPUT": topic,
                        "HOTLEAD_TOPICS__ACCOUNT_CONTRIBUTIONS": contributions,
                        "HOTLEAD_TOPICS__ACCOUNT_ALERTS": ACCOUNT_ALERTS})


def peer_command(system: str, args, brokers: str, redis: Redis, topic: str, group: str, work: Path) -> list[str]:
    script = ROOT / "bench" / "peers" / ("python_peer.py" if system == "python" else "quix_peer.py")
    return [args.python, str(script), "--brokers", brokers, "--topic", topic, "--group", group,
            "--redis-url", redis.url, "--prefix", f"bench:{system}", "--alerts-topic", ALERTS,
            "--rules", str(RULES), "--proto-out", str(work / f"proto-{system}"),
            "--fetch-wait-ms", str(args.fetch_wait_ms)]


def pattern(system: str) -> str:
    return "hl:*:states" if system == "hotlead" else f"bench:{system}:c:*"


def first_key_time(redis: Redis, proc: subprocess.Popen, timeout: float = 120) -> float | None:
    """When the system wrote its first state to Redis (its start-up excluded)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if int(redis.cli("DBSIZE").strip() or 0) > 0:
            return time.time()
        time.sleep(0.01)
    return None


def drain(system: str, args, work: Path, broker: Broker, redis: Redis, topic: str, ends: dict[int, int],
          events: int, tag: str = "") -> dict:
    """One system drains `topic`; `tag` keeps a population's groups and logs apart."""
    name = system + tag
    log(f"{name}: draining {topic} ...")
    redis.cli("FLUSHALL")
    mem0, cpu0 = redis.memory(), redis.cpu()
    if system == "ceiling":
        started = time.time()
        r = bench_json(["ceiling", "--group", f"bench-ceiling{tag}", "--fetch-wait-ms", str(args.fetch_wait_ms)],
                       broker.brokers, topic)
        return {"events_per_second": r["events"] / r["seconds"], "seconds": r["seconds"],
                "cpu_seconds": r["cpu_seconds"], "events": r["events"], "redis_cpu_seconds": 0.0,
                "peak_rss_mib": None, "check": {"ok": True, "note": "reads only"}, "wall": time.time() - started}
    logfile = work / f"{name}.log"
    logf = open(logfile, "w")
    if system == "hotlead":
        proc = start_hotlead(work, name, broker, redis, topic, args.fetch_wait_ms, logf)
        t0 = first_key_time(redis, proc)
        t1 = wait_drained(proc, broker, topic, f"bench-{name}", args.timeout, logfile)
        proc.send_signal(signal.SIGTERM)
        code, cpu, rss = wait4(proc, 60)
    else:
        cmd = peer_command(system, args, broker.brokers, redis, topic, f"bench-{name}", work) + ["--until-drained"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True)
        t0 = first_key_time(redis, proc)
        code, cpu, rss = wait4(proc, args.timeout)
        t1 = time.time()
        if code != 0:
            sys.exit(f"bench: {system} peer exited with {code}; see {logfile}")
    if t0 is None:
        sys.exit(f"bench: {system} wrote nothing to Redis; see {logfile}")
    redis_cpu = redis.cpu() - cpu0
    check = bench_json(["verify", "--rules", str(RULES), "--redis", redis.url, "--pattern", pattern(system)],
                       broker.brokers, topic)
    contacts = check["contacts_checked"]
    mem = redis.memory() - mem0
    log(f"{name}: {events / (t1 - t0):,.0f} events/s, peak RSS {rss / 1024:,.0f} MiB, "
        f"{mem / contacts if contacts else 0:,.0f} Redis bytes per contact-model, "
        f"check {'ok' if check['ok'] else 'FAILED'}")
    return {"events_per_second": events / (t1 - t0), "seconds": t1 - t0, "cpu_seconds": cpu,
            "redis_cpu_seconds": redis_cpu, "peak_rss_mib": rss / 1024, "events": events,
            "redis_memory_bytes": mem, "redis_bytes_per_contact_model": mem / contacts if contacts else None,
            "check": check}


def lane_done(redis: Redis, lane: str, topic: str, partitions: int) -> int:
    """Messages a back-filled lane has applied (its watermarks + 1, summed)."""
    done = 0
    for p in range(partitions):
        w = redis.cli("GET", f"hl:lane:{lane}:{{{topic}:{p}}}:wm").strip()
        done += int(w) + 1 if w else 0
    return done


def backfill_cost(args, work: Path, broker: Broker, redis: Redis, events: int, alone: dict) -> list[dict]:
    """hotlead drains the backlog while `hotlead backfill` scores the same topic in a lane of its own, on the
    same broker and Redis: the live pipeline's events/s beside its rate alone, for each back-fill rate limit."""
    out = []
    for max_rate in args.backfill_rates:
        name = f"hotlead-bf{max_rate}"
        log(f"{name}: draining {INPUT} with a back-fill at {'full speed' if not max_rate else fmt(max_rate) + ' events/s'} ...")
        redis.cli("FLUSHALL")
        logfile = work / f"{name}.log"
        logf = open(logfile, "w")
        live = start_hotlead(work, name, broker, redis, INPUT, args.fetch_wait_ms, logf)
        cfg = hotlead_config(work, name + "-lane", broker.brokers, redis, INPUT, free_port(), args.fetch_wait_ms)
        lane = subprocess.Popen([str(HOTLEAD), "backfill", "-c", str(cfg), "--rules", str(RULES_V2),
                                 "--model", "engagement-v2", "--max-rate", str(max_rate)],
                                stdout=logf, stderr=subprocess.STDOUT)
        t0 = first_key_time(redis, live)
        t1 = wait_drained(live, broker, INPUT, f"bench-{name}", args.timeout, logfile)
        lane_events = lane_done(redis, "engagement-v2", INPUT, args.partitions)
        live.send_signal(signal.SIGTERM)
        wait4(live, 60)
        lane.send_signal(signal.SIGTERM)
        wait4(lane, 60)
        check = bench_json(["verify", "--rules", str(RULES), "--redis", redis.url, "--pattern", "hl:{*:states"],
                           broker.brokers, INPUT)
        rate = events / (t1 - t0)
        share = rate / alone["events_per_second"]
        # A back-fill that finished before the live drain did ran at least this fast.
        finished = lane_events >= events
        log(f"{name}: live {rate:,.0f} events/s ({share:.0%} of alone), back-fill {'>= ' if finished else ''}"
            f"{lane_events / (t1 - t0):,.0f} events/s meanwhile, check {'ok' if check['ok'] else 'FAILED'}")
        out.append({"max_rate": max_rate, "live_events_per_second": rate, "share_of_alone": share,
                    "backfill_events_per_second": lane_events / (t1 - t0), "backfill_finished": finished,
                    "check": check})
    return out


def backfill_table(results: dict) -> list[str]:
    alone = results["systems"]["hotlead"]["events_per_second"]
    lines = ["## Back-fill cost", "",
             "The live pipeline drains the backlog while `hotlead backfill` scores the same topic into a lane of its "
             "own (bench/rules-v2.yaml), on the same broker, Redis and cores.", "",
             "| back-fill rate limit | live events/s | of live alone | back-fill events/s meanwhile | live check |",
             "|---|---:|---:|---:|---|",
             f"| no back-fill | {fmt(alone)} | 100 % | – | {check_text(results['systems']['hotlead']['check'])} |"]
    for r in results["backfill"]:
        limit = "none (`--max-rate 0`)" if not r["max_rate"] else f"`--max-rate {r['max_rate']}`"
        bf = ("≥ " if r.get("backfill_finished") else "") + fmt(r["backfill_events_per_second"])
        lines.append(f"| {limit} | {fmt(r['live_events_per_second'])} | {r['share_of_alone']:.0%} | "
                     f"{bf} | {check_text(r['check'])} |")
    return lines


def account_keys(redis: Redis, topic: str) -> list[str]:
    """The account stage's Redis keys for contribution topic `topic`."""
    return [k for k in redis.cli("--scan", "--pattern", f"hl:{{{topic}:*").splitlines() if k]


def contributions_applied(redis: Redis, topic: str, partitions: int) -> int:
    """Contributions of `topic` the account stage has committed (its watermarks + 1, summed)."""
    keys = [f"hl:{{{topic}:{p}}}:wm" for p in range(partitions)]
    return sum(int(w) + 1 for w in redis.cli("MGET", *keys).splitlines() if w.strip())


def wait_accounts(proc: subprocess.Popen, redis: Redis, topic: str, partitions: int, contributions: int,
                  timeout: float, logfile: Path) -> float:
    """Waits until the account stage's watermarks reach `topic`'s end offsets; returns when (time.time())."""
    deadline = time.time() + timeout
    while contributions_applied(redis, topic, partitions) < contributions:
        if proc.poll() is not None:
            sys.exit(f"bench: hotlead stopped before rolling up every contribution; see {logfile}")
        if time.time() > deadline:
            sys.exit(f"bench: the account stage did not catch up in {timeout:.0f} s; see {logfile}")
        time.sleep(0.02)
    return time.time()


def topic_total(broker: Broker, topic: str) -> int:
    """Messages in `topic` (its end offsets, summed)."""
    return sum(bench_json(["ends"], broker.brokers, topic).values())


def account_run(args, work: Path, broker: Broker, redis: Redis, events: int, name: str, stages: str,
                topic: str) -> dict:
    """hotlead with bench/rules-accounts.yaml, `stages` (all, contacts or accounts) and contribution topic
    `topic`. The contact stage (all, contacts) drains the backlog from fresh Redis; the account stage (all,
    accounts) runs until its watermarks reach the end of `topic` (accounts: a fresh group over what is there)."""
    log(f"{name}: {'both stages' if stages == 'all' else f'the {stages[:-1]} stage'} with account roll-ups "
        "(bench/rules-accounts.yaml) ...")
    if stages != "accounts":
        redis.cli("FLUSHALL")
    mem0, cpu0, broker0 = redis.memory(), redis.cpu(), broker.cpu()
    topic0, alerts0 = topic_total(broker, topic), topic_total(broker, ACCOUNT_ALERTS)
    logfile = work / f"{name}.log"
    proc = start_hotlead(work, name, broker, redis, INPUT, args.fetch_wait_ms, open(logfile, "w"),
                         rules=RULES_ACCOUNTS, contributions=topic, stages=stages)
    out = {"stages": stages}
    if stages != "accounts":
        t0 = first_key_time(redis, proc)
        if t0 is None:
            sys.exit(f"bench: {name} wrote nothing to Redis; see {logfile}")
        t1 = wait_drained(proc, broker, INPUT, f"bench-{name}", args.timeout, logfile)
        # Offsets are stored once the outbox is relayed: the contributions are all on the topic.
        contributions = topic_total(broker, topic) - topic0
        out |= {"events_per_second": events / (t1 - t0), "seconds": t1 - t0, "contributions": contributions,
                "contributions_per_event": contributions / events}
    else:
        contributions = topic0
        deadline = time.time() + 120
        while contributions_applied(redis, topic, args.partitions) == 0:
            if proc.poll() is not None or time.time() > deadline:
                sys.exit(f"bench: {name} rolled nothing up; see {logfile}")
            time.sleep(0.01)
        t0 = t1 = time.time()
        out["contributions"] = contributions
    if stages != "contacts":
        behind = contributions - contributions_applied(redis, topic, args.partitions)
        t2 = wait_accounts(proc, redis, topic, args.partitions, contributions, args.timeout, logfile)
        out |= {"contributions_per_second": contributions / (t2 - t0), "behind_at_drain": behind,
                "caught_up_after_seconds": t2 - t1}
    proc.send_signal(signal.SIGTERM)
    _, cpu, rss = wait4(proc, 60)
    out |= {"cpu_seconds": cpu, "redis_cpu_seconds": redis.cpu() - cpu0, "broker_cpu_seconds": broker.cpu() - broker0,
            "peak_rss_mib": rss / 1024, "redis_memory_bytes": redis.memory() - mem0}
    if stages != "contacts":
        keys = account_keys(redis, topic)
        usage = subprocess.run(["redis-cli", "-p", str(redis.port)], check=True, capture_output=True, text=True,
                               input="".join(f"MEMORY USAGE {k} SAMPLES 0\n" for k in keys)).stdout
        out |= {"account_key_bytes": sum(int(v) for v in usage.split()),
                "accounts": sum(int(redis.cli("HLEN", k).strip()) for k in keys if k.endswith(":states")),
                "account_alerts": topic_total(broker, ACCOUNT_ALERTS) - alerts0}
    if stages != "accounts":
        out["check"] = bench_json(["verify", "--rules", str(RULES_ACCOUNTS), "--redis", redis.url, "--pattern",
                                   f"hl:{{{INPUT}:*:states"], broker.brokers, INPUT)
    parts = []
    if "events_per_second" in out:
        parts.append(f"contacts {out['events_per_second']:,.0f} events/s, {contributions:,} contribution messages "
                     f"({out['contributions_per_event']:.3f} per event)")
    if "contributions_per_second" in out:
        behind = (f"{out['behind_at_drain']:,} behind at the drain, caught up "
                  f"{out['caught_up_after_seconds']:.1f} s later, " if stages == "all" else "")
        parts.append(f"accounts {out['contributions_per_second']:,.0f} messages/s, {behind}"
                     f"{out['accounts']:,} accounts, {out['account_alerts']:,} account alerts")
    parts.append(f"CPU s: hotlead {cpu:.1f}, Redis {out['redis_cpu_seconds']:.1f}, broker "
                 f"{out['broker_cpu_seconds']:.1f}")
    if "check" in out:
        parts.append(f"check {'ok' if out['check']['ok'] else 'FAILED'}")
    log(f"{name}: {'; '.join(parts)}")
    return out


def accounts_cost(args, work: Path, broker: Broker, redis: Redis, events: int) -> dict:
    """The accounts phase: hotlead drains the backlog without account models, then with them (both stages in
    one process); then the stages apart, each alone on the machine: the contact stage (sending contributions
    that nothing reads meanwhile), then the account stage over what it sent."""
    make_topic(broker, args.partitions, INPUT, CONTRIBUTIONS_APART)
    broker0 = broker.cpu()
    without = drain("hotlead", args, work, broker, redis, INPUT, {}, events, tag="-no-accounts")
    without["broker_cpu_seconds"] = broker.cpu() - broker0
    without["share_of_without"] = 1.0
    both = account_run(args, work, broker, redis, events, "hotlead-accounts", "all", CONTRIBUTIONS)
    both["share_of_without"] = both["events_per_second"] / without["events_per_second"]
    contacts = account_run(args, work, broker, redis, events, "hotlead-accounts-contacts", "contacts",
                           CONTRIBUTIONS_APART)
    contacts["share_of_without"] = contacts["events_per_second"] / without["events_per_second"]
    accounts = account_run(args, work, broker, redis, events, "hotlead-accounts-alone", "accounts",
                           CONTRIBUTIONS_APART)
    return {"without": without, "with": both, "contacts": contacts, "alone": accounts}


def accounts_table(results: dict) -> list[str]:
    a = results["accounts"]
    wo, w, co, alone = a["without"], a["with"], a["contacts"], a["alone"]
    n, c = results["params"]["events"], w["contributions"]
    per_m = lambda v: v / n * 1e6  # noqa: E731
    pct = lambda v: f"{v * 100:.0f} %"  # noqa: E731
    mib = lambda v: f"{v / 2**20:.1f}"  # noqa: E731

    def row(label: str, r: dict) -> str:
        share = pct(r["share_of_without"]) if "share_of_without" in r else "–"
        return (f"| {label} | {fmt(r.get('events_per_second'))} | {share} | "
                f"{fmt(r.get('contributions_per_second'))} | {per_m(r['cpu_seconds']):.2f} | "
                f"{per_m(r['redis_cpu_seconds']):.2f} | {per_m(r['broker_cpu_seconds']):.2f} | "
                f"{fmt(r['peak_rss_mib'])} | {mib(r['redis_memory_bytes'])} | "
                f"{check_text(r['check']) if 'check' in r else '–'} |")

    return ["## Account roll-ups: the cost of the account stage", "",
            "hotlead drains the backlog with bench/rules.yaml, then with bench/rules-accounts.yaml (the same model "
            "with an account roll-up) on the same broker, Redis and cores: the contact stage sends each contact's "
            "part in its account to an internal topic through its outbox, and the account stage (group "
            "`<group.id>.accounts`) rolls accounts up from it. Then the two stages run apart "
            "(`pipeline.stages`), each alone on the machine: the contact stage, then the account stage over the "
            "contributions it sent. The contact stage has drained when its group has committed the end of the "
            "input; the account stage has caught up when its watermarks reach the contribution topic's end "
            "offsets. CPU seconds are per million input events.", "",
            "| run | contact stage events/s | of without | account stage messages/s | hotlead CPU s | Redis CPU s "
            "| broker CPU s | peak RSS MiB | Redis MiB added | contacts' oracle check |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            row("no account model", wo),
            row("account roll-ups, both stages in one process", w),
            row("contact stage alone (`pipeline.stages = contacts`)", co),
            row("account stage alone (`pipeline.stages = accounts`), same contributions", alone), "",
            f"{fmt(c)} contribution messages (bundles of a batch's contributions per partition; "
            f"{w['contributions_per_event']:.3f} per event) for {fmt(w['accounts'])} accounts "
            f"({fmt(w['account_alerts'])} account alerts). With both stages in one process the account stage was "
            f"{fmt(w['behind_at_drain'])} messages behind when the contact stage had drained and caught up "
            f"{w['caught_up_after_seconds']:.1f} s later. Alone it takes {alone['cpu_seconds'] / c * 1e6:.1f} µs of "
            f"hotlead's CPU and {alone['redis_cpu_seconds'] / c * 1e6:.1f} µs of Redis's per message. The "
            f"account keys hold {mib(w['account_key_bytes'])} MiB of Redis "
            f"({w['account_key_bytes'] / max(w['accounts'], 1):,.0f} bytes per account); "
            f"{mib(w['redis_memory_bytes'] - wo['redis_memory_bytes'])} MiB more than the run without accounts."]


def load_backlog(broker: Broker, topic: str, partitions: int, events: int,
                 contacts: int) -> tuple[dict[int, int], float]:
    """Creates `topic` and loads it; returns its end offsets and the load's seconds."""
    make_topic(broker, partitions, topic)
    log(f"loading {events:,} events over {contacts:,} contacts into {topic} ...")
    loaded = bench_json(["load", "--events", str(events), "--contacts", str(contacts)], broker.brokers, topic)
    log(f"loaded in {loaded['seconds']:.1f} s")
    ends = {int(p): h for p, h in bench_json(["ends"], broker.brokers, topic).items()}
    if sum(ends.values()) != events:
        sys.exit(f"bench: {topic} holds {sum(ends.values())} events, not {events}")
    return ends, loaded["seconds"]


def open_loop(args, broker: Broker, topic: str, rate: float, label: str, seed: int, *extra: str) -> dict:
    """One `hotlead-bench latency` run on `topic` at `rate` events/s."""
    return bench_json(["latency", "--rate", str(rate), "--seconds", str(args.latency_seconds), "--contacts",
                       str(args.contacts), "--seed", str(seed), "--label", label,
                       "--fetch-wait-ms", str(args.fetch_wait_ms), *extra], broker.brokers, topic)


def quantiles(r: dict) -> str:
    return f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms"


def broker_latency(args, broker: Broker, rates: list[float], half: float) -> tuple[dict, list[dict]]:
    """The broker alone: one hop at half load, and two hops at every rate."""
    topic, relay = "latency-broker", "latency-relay"
    make_topic(broker, args.partitions, topic)
    make_topic(broker, args.partitions, relay)
    log(f"broker: one hop at {half:,.0f} events/s for {args.latency_seconds:.0f} s ...")
    one = open_loop(args, broker, topic, half, "echo", 11 + rates.index(half), "--echo")
    log(f"broker one hop: {quantiles(one)}")
    two = []
    for i, rate in enumerate(rates):
        log(f"broker: two hops at {rate:,.0f} events/s for {args.latency_seconds:.0f} s ...")
        r = open_loop(args, broker, topic, rate, f"relay-{i}", 11 + i, "--relay", relay)
        log(f"broker two hops: {quantiles(r)} over {r['alerts']:,} events")
        two.append(r)
    return one, two


def latency(system: str, args, work: Path, broker: Broker, redis: Redis, rates: list[float]) -> list[dict]:
    """One system, started once, in open loop at each rate in turn."""
    topic = f"latency-{system}"
    make_topic(broker, args.partitions, topic)
    logfile = work / f"{system}-latency.log"
    logf = open(logfile, "w")
    if system == "hotlead":
        proc = start_hotlead(work, "hotlead-latency", broker, redis, topic, args.fetch_wait_ms, logf)
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
    out = []
    for i, rate in enumerate(rates):
        if proc.poll() is not None:
            sys.exit(f"bench: {system} stopped during the latency phase; see {logfile}")
        log(f"{system}: open loop at {rate:,.0f} events/s for {args.latency_seconds:.0f} s on {topic} ...")
        r = open_loop(args, broker, topic, rate, f"lat-{system}-{i}", 11 + i, "--alerts-topic", ALERTS)
        log(f"{system}: {quantiles(r)} over {r['alerts']:,} alerts")
        out.append(r)
    proc.send_signal(signal.SIGTERM)
    wait4(proc, 60)
    return out


def latency_rows(results: dict, two_hops: list[dict], by_system: dict[str, list[dict]]) -> list[dict]:
    """The latency table: per rate, the broker's two hops, then each system with its own share."""
    rows = []
    for i, rate in enumerate(results["latency_rates"]):
        broker = two_hops[i]
        rows.append({"rate": rate, "system": "broker", **pick(broker), "share_p50_ms": None, "share_p99_ms": None})
        for system, runs in by_system.items():
            r = runs[i]
            rows.append({"rate": rate, "system": system, **pick(r),
                         "share_p50_ms": minus(r["p50_ms"], broker["p50_ms"]),
                         "share_p99_ms": minus(r["p99_ms"], broker["p99_ms"])})
    return rows


def pick(r: dict) -> dict:
    return {k: r[k] for k in ("p50_ms", "p99_ms", "p999_ms", "alerts", "achieved_rate")}


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def scaling(args, work: Path, broker: Broker, redis: Redis, order: list[str], drained: dict) -> list[dict]:
    """hotlead (and, with --scaling-peers, the peers) over each population."""
    systems = [s for s in order if s == "hotlead" or (args.scaling_peers and s in ("python", "quix"))]
    rows = []
    for contacts in args.scaling_contacts:
        if contacts == args.contacts:
            log(f"scaling: {contacts:,} contacts is the main backlog's population; its figures stand")
            measured = {s: drained[s] for s in systems}
        else:
            topic = f"{INPUT}-c{contacts}"
            ends, _ = load_backlog(broker, topic, args.partitions, args.events, contacts)
            measured = {s: drain(s, args, work, broker, redis, topic, ends, args.events, f"-c{contacts}")
                        for s in systems}
        for s, r in measured.items():
            b = r.get("redis_bytes_per_contact_model")
            rows.append({"contacts": contacts, "system": s, "events": r["events"],
                         "events_per_second": r["events_per_second"], "peak_rss_mib": r["peak_rss_mib"],
                         "cpu_seconds": r["cpu_seconds"], "redis_bytes_per_contact_model": b,
                         "contact_models": r["check"].get("contacts_checked"),
                         "projected_bytes": projected(b), "check": r["check"]})
    return rows


def projected(bytes_per_contact_model: float | None) -> float | None:
    """Redis for PROJECTED_CONTACTS x PROJECTED_MODELS, from bytes per contact-model."""
    if bytes_per_contact_model is None:
        return None
    return bytes_per_contact_model * PROJECTED_CONTACTS * PROJECTED_MODELS


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


def main_table(results: dict) -> list[str]:
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
            fmt(r.get("redis_bytes_per_contact_model"), ",.0f"), check_text(r["check"])))
    return [
        "| system | events/s | of ceiling | scorer CPU s / 1M events | Redis CPU s / 1M events | peak RSS MiB "
        "| event-to-alert p50 / p99 / p99.9 ms (ceiling: the broker's one hop) | Redis bytes / contact-model "
        "| oracle check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
    ]


def check_text(check: dict) -> str:
    if check["ok"]:
        return "ok"
    return "FAILED ({} of {} differ)".format(check.get("mismatched"), check.get("contacts_checked"))


def latency_table(results: dict) -> list[str]:
    half = results["latency_rates"][-1]
    rows = []
    for r in results["latency"]:
        rate = fmt(r["rate"]) + (" (half load)" if r["rate"] == half else "")
        name = "broker alone, two hops" if r["system"] == "broker" else LABELS[r["system"]]
        share = "–"
        if r["system"] != "broker":
            share = f"{fmt(r['share_p50_ms'], '+,.0f')} / {fmt(r['share_p99_ms'], '+,.0f')}"
        rows.append(f"| {rate} | {name} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['p999_ms'])} | {share} |")
    return [
        "## Latency by rate",
        "",
        f"Open loop for {results['params']['latency_seconds']:.0f} s per rate, event time to the alert's arrival, ms. "
        "The broker alone: input topic -> pass-through -> output topic -> consumer, the two hops an alert "
        "takes. Own share: the system's figure minus the broker's two hops at the same rate.",
        "",
        "| rate events/s | system | p50 | p99 | p99.9 | own share p50 / p99 |",
        "|---:|---|---:|---:|---:|---:|",
        *rows,
    ]


def scaling_table(results: dict) -> list[str]:
    rows = [
        "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            fmt(r["contacts"]), LABELS[r["system"]], fmt(r["events"]), fmt(r["events_per_second"]),
            fmt(r["peak_rss_mib"], ",.0f"), fmt(r["redis_bytes_per_contact_model"], ",.0f"),
            fmt(gib(r["projected_bytes"]), ",.2f"), check_text(r["check"]))
        for r in results["scaling"]]
    return [
        "## Scaling",
        "",
        f"Each population drains {results['params']['events']:,} events from a backlog of its own. Projected Redis: "
        f"bytes per contact-model x {PROJECTED_CONTACTS:,} contacts x {PROJECTED_MODELS} models.",
        "",
        "| contacts | system | events | events/s | peak RSS MiB | Redis bytes / contact-model "
        f"| Redis for {PROJECTED_CONTACTS // 1_000_000}M contacts x {PROJECTED_MODELS} models, projected GiB "
        "| oracle check |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
        *rows,
    ]


def gib(b: float | None) -> float | None:
    return None if b is None else b / 2**30


def report(results: dict) -> str:
    p = results["params"]
    if results.get("latency"):
        rates = ", ".join(fmt(r) for r in results["latency_rates"][:-1])
        latency_note = (f" Latency: open loop at {rates} events/s and at {fmt(results['latency_rates'][-1])} "
                        f"(half of hotlead's rate) for {p['latency_seconds']:.0f} s per system and rate.")
    else:
        latency_note = " No latency phase."
    lines = [
        f"# hotlead benchmark{' (quick)' if p['quick'] else ''}, {results['date']}",
        "",
        f"Machine: {results['machine']}. Broker: Tansu 0.6.0 (SQLite), redis-server {results['redis_version']}, "
        "both on 127.0.0.1.",
        f"Backlog: {p['events']:,} events over {p['contacts']:,} contacts (Zipf), {p['partitions']} partitions; "
        f"rules: bench/rules.yaml.{latency_note}",
        f"Command: `{results['command']}`",
        "",
        *main_table(results),
        "",
    ]
    if results.get("latency"):
        lines += [*latency_table(results), ""]
    if results.get("scaling"):
        lines += [*scaling_table(results), ""]
    if results.get("backfill"):
        lines += [*backfill_table(results), ""]
    if results.get("accounts"):
        lines += [*accounts_table(results), ""]
    if results.get("hot_path"):
        h = results["hot_path"]
        lines += ["## Hot path", "",
                  f"hotlead's partition worker in-process, no broker and no Redis (`hotlead-bench hot-path`: "
                  f"{h['events']:,} simulated events over {h['contacts']:,} contacts, batches of {h['batch']:,}; "
                  "decoding, the state cache, scoring and the commit plan): "
                  f"{h['cpu_us_per_event']:.2f} µs CPU, {h['allocations_per_event']:.1f} allocations and "
                  f"{h['allocated_bytes_per_event']:,.0f} bytes allocated per event.", ""]
    if results.get("guard"):
        verdict = lambda g: "holds" if g["holds"] else "FAILS"  # noqa: E731
        lines += ["## Regression guard", "",
                  *[f"- {g['target']}: {g['measured']} — {verdict(g)}" for g in results["guard"]], ""]
    lines += [
        "## Targets",
        "",
        *[f"- {t['target']}: {t['measured']} — "
          f"{'not measured' if t['holds'] is None else 'holds' if t['holds'] else 'does not hold'}"
          for t in results["targets"]],
        "",
    ]
    return "\n".join(lines)


def target(text: str, measured: str, holds: bool | None) -> dict:
    return {"target": text, "measured": measured, "holds": holds}


def targets(results: dict) -> list[dict]:
    s = results["systems"]
    h = s.get("hotlead")
    if not h:
        return []
    out = []
    per_cpu = lambda r: r["events"] / r["cpu_seconds"] if r["cpu_seconds"] else None  # noqa: E731
    hotlead_pops = [r for r in results.get("scaling", []) if r["system"] == "hotlead"]

    # Memory: the main backlog and every scaling population.
    sizes = [(results["params"]["contacts"], h.get("redis_bytes_per_contact_model"), h["peak_rss_mib"])]
    sizes += [(r["contacts"], r["redis_bytes_per_contact_model"], r["peak_rss_mib"])
              for r in hotlead_pops if r["contacts"] != results["params"]["contacts"]]
    sizes.sort()
    b = h.get("redis_bytes_per_contact_model")
    peers = {n: s[n].get("redis_bytes_per_contact_model") for n in ("python", "quix") if n in s}
    if b is not None:
        worst = max(v for _, v, _ in sizes if v is not None)
        below = all(v is not None and b < v for v in peers.values())
        measured = ", ".join(f"{fmt(v)} at {fmt(c)} contacts" for c, v, _ in sizes) + "; peers: " + (
            ", ".join(f"{n} {fmt(v)}" for n, v in peers.items()) or "not run")
        holds = worst <= TARGET_MAX_BYTES and (below if len(peers) == 2 else None)
        out.append(target(f"Redis <= {TARGET_MAX_BYTES} bytes per contact-model (every population) and below "
                          "both peers", measured, holds))
    worst_rss = max(r for _, _, r in sizes)
    out.append(target(f"peak RSS <= {TARGET_MAX_RSS_MIB} MiB (every population)",
                      ", ".join(f"{fmt(r)} MiB at {fmt(c)} contacts" for c, _, r in sizes),
                      worst_rss <= TARGET_MAX_RSS_MIB))
    us = h["cpu_seconds"] / h["events"] * 1e6
    out.append(target(f"scorer <= {TARGET_MAX_CPU_US} µs CPU per event", f"{us:.2f} µs", us <= TARGET_MAX_CPU_US))
    if "python" in s:
        ratio = per_cpu(h) / per_cpu(s["python"])
        out.append(target(f">= {TARGET_VS_PYTHON:g}x the Python peer's events per scorer CPU-second",
                          f"{ratio:.1f}x", ratio >= TARGET_VS_PYTHON))
    else:
        out.append(target(f">= {TARGET_VS_PYTHON:g}x the Python peer's events per scorer CPU-second",
                          "Python peer not run", None))
    ratio = h["events_per_second"] / s["ceiling"]["events_per_second"]
    out.append(target(f"throughput >= {TARGET_OF_CEILING * 100:.0f} % of the consume-only ceiling", f"{ratio:.0%}",
                      ratio >= TARGET_OF_CEILING))
    rows = {(r["rate"], r["system"]): r for r in results.get("latency", [])}
    for rate in results["params"]["latency_rates"]:
        r = rows.get((rate, "hotlead"))
        text = f"hotlead's own share of event-to-alert p99 <= {TARGET_MAX_SHARE_P99_MS:g} ms at {fmt(rate)} events/s"
        if r is None or r["share_p99_ms"] is None:
            out.append(target(text, "not measured", None))
        else:
            out.append(target(text, f"{fmt(r['share_p99_ms'], '+,.0f')} ms (hotlead {fmt(r['p99_ms'])}, "
                                    f"broker two hops {fmt(r['p99_ms'] - r['share_p99_ms'])})",
                              r["share_p99_ms"] <= TARGET_MAX_SHARE_P99_MS))
    half = results["latency_rates"][-1] if results.get("latency") else None
    hl, py = rows.get((half, "hotlead")), rows.get((half, "python"))
    text = "at half load, hotlead's event-to-alert p50 and p99 no worse than the Python peer's"
    if hl is None or py is None or None in (hl["p50_ms"], hl["p99_ms"], py["p50_ms"], py["p99_ms"]):
        out.append(target(text, "not measured", None))
    else:
        out.append(target(text, f"p50 {fmt(hl['p50_ms'])} vs {fmt(py['p50_ms'])} ms, "
                                f"p99 {fmt(hl['p99_ms'])} vs {fmt(py['p99_ms'])} ms",
                          hl["p50_ms"] <= py["p50_ms"] and hl["p99_ms"] <= py["p99_ms"]))
    bf = [r for r in results.get("backfill", []) if r["max_rate"] == BACKFILL_DEFAULT_RATE]
    text = (f"beside a back-fill at its default rate ({fmt(BACKFILL_DEFAULT_RATE)} events/s), the live pipeline drains "
            f">= {TARGET_BACKFILL_SHARE:.0%} of its rate alone")
    if bf:
        r = bf[0]
        out.append(target(text, f"{r['share_of_alone']:.0%} ({fmt(r['live_events_per_second'])} of {fmt(h['events_per_second'])})",
                          r["share_of_alone"] >= TARGET_BACKFILL_SHARE))
    else:
        out.append(target(text, "not measured", None))
    acc = results.get("accounts")
    text = (f"with account models, the contact stage drains >= {TARGET_ACCOUNTS_SHARE:.0%} of its rate without them "
            "(both stages in one process on the same cores)")
    if acc:
        w = acc["with"]
        out.append(target(text, f"{w['share_of_without']:.0%} ({fmt(w['events_per_second'])} of "
                                f"{fmt(acc['without']['events_per_second'])})",
                          w["share_of_without"] >= TARGET_ACCOUNTS_SHARE))
    else:
        out.append(target(text, "not measured", None))
    checks = [(n, s[n]["check"]["ok"]) for n in results["order"]]
    checks += [(f"{r['system']} at {fmt(r['contacts'])} contacts", r["check"]["ok"])
               for r in results.get("scaling", []) if r["contacts"] != results["params"]["contacts"]]
    if acc:
        checks += [(f"hotlead {label}", acc[k]["check"]["ok"]) for k, label in
                   (("without", "without account models"), ("with", "with account models"),
                    ("contacts", "contact stage alone"))]
    out.append(target("oracle check ok for every system and population",
                      ", ".join(f"{n}: {'ok' if ok else 'FAILED'}" for n, ok in checks), all(ok for _, ok in checks)))
    return out


def guard(results: dict) -> list[dict]:
    """The regression guard of --quick."""
    s = results["systems"]
    ratio = s["hotlead"]["events_per_second"] / s["ceiling"]["events_per_second"]
    b = s["hotlead"].get("redis_bytes_per_contact_model")
    return [
        target(f"hotlead's events/s >= {GUARD_MIN_OF_CEILING * 100:.0f} % of the ceiling's",
               f"{fmt(s['hotlead']['events_per_second'])} of {fmt(s['ceiling']['events_per_second'])}, {ratio:.0%}",
               ratio >= GUARD_MIN_OF_CEILING),
        target(f"Redis <= {GUARD_MAX_BYTES} bytes per contact-model", f"{fmt(b)} bytes",
               b is not None and b <= GUARD_MAX_BYTES),
        target("hotlead's scores equal the oracle's", "ok" if s["hotlead"]["check"]["ok"] else "FAILED",
               s["hotlead"]["check"]["ok"]),
    ]


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


def rate_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def contacts_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, help=f"backlog size (default 1,000,000; --quick: {QUICK_EVENTS:,})")
    ap.add_argument("--contacts", type=int, help=f"contacts (default 100,000; --quick: {QUICK_CONTACTS:,})")
    ap.add_argument("--partitions", type=int, default=8, help="input partitions (default 8)")
    ap.add_argument("--latency-seconds", type=float, default=15,
                    help="open-loop phase per system and rate (default 15)")
    ap.add_argument("--latency-rates", type=rate_list, default=FIXED_RATES,
                    help="fixed open-loop rates in events/s, beside half of hotlead's rate (default 1000,5000)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {','.join(SYSTEMS)}")
    ap.add_argument("--no-latency", action="store_true", help="skip the open-loop phase")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling phase")
    ap.add_argument("--scaling-contacts", type=contacts_list, default=SCALING_CONTACTS,
                    help="the scaling phase's populations (default 10000,100000,1000000)")
    ap.add_argument("--scaling-peers", action="store_true",
                    help="the peers too in the scaling phase (default: hotlead only)")
    ap.add_argument("--quick", action="store_true",
                    help=f"regression guard: {QUICK_EVENTS:,} events over {QUICK_CONTACTS:,} contacts, ceiling and "
                         "hotlead only, no latency, no scaling; exits 1 when hotlead falls under "
                         f"{GUARD_MIN_OF_CEILING:.0%} of the ceiling or Redis holds more than {GUARD_MAX_BYTES} "
                         "bytes per contact-model")
    ap.add_argument("--backfill-rates", type=lambda t: [int(x) for x in t.split(",") if x != ""],
                    help="the back-fill phase: hotlead drains the backlog while `hotlead backfill` runs at each "
                         "--max-rate (0: full speed); default 0,3000 (3,000: the back-fill's default); --quick: "
                         "none unless given; '' skips it")
    ap.add_argument("--accounts", action=argparse.BooleanOptionalAction,
                    help="the accounts phase: hotlead drains the backlog without and with account roll-ups "
                         "(bench/rules-accounts.yaml), then the account stage alone; default: on, --quick: off")
    ap.add_argument("--fetch-wait-ms", type=int, default=10,
                    help="fetch.wait.max.ms of every system's consumer (Tansu holds each fetch this long; default 10)")
    ap.add_argument("--timeout", type=float, default=900, help="longest drain per system, seconds")
    ap.add_argument("--python", default=sys.executable, help="Python for the peers")
    ap.add_argument("--out", help="results directory (default bench/results; --quick: the run's directory)")
    args = ap.parse_args()
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else 1_000_000
    if args.contacts is None:
        args.contacts = QUICK_CONTACTS if args.quick else 100_000
    if args.backfill_rates is None:
        args.backfill_rates = [] if args.quick else [0, BACKFILL_DEFAULT_RATE]
    if args.accounts is None:
        args.accounts = not args.quick
    if args.quick:
        args.systems, args.no_latency, args.no_scaling = "ceiling,hotlead", True, True
    return args


def main() -> int:
    args = parse_args()
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
        ends, load_seconds = load_backlog(broker, INPUT, args.partitions, args.events, args.contacts)
        results = {"date": stamp, "machine": machine(), "order": order, "systems": {},
                   "params": vars(args) | {"load_seconds": load_seconds},
                   "redis_version": redis.info().get("redis_version", "?"),
                   "command": " ".join(["scripts/bench.sh", *command_args()])}
        for system in order:
            results["systems"][system] = drain(system, args, work, broker, redis, INPUT, ends, args.events)
        if "hotlead" in order:
            log("hotlead's hot path in-process (decode, state cache, scoring, commit plan) ...")
            sizes = ["--events", str(min(args.events, 200_000)), "--contacts", str(min(args.contacts, 20_000))]
            results["hot_path"] = bench_json(["hot-path", "--rules", str(RULES), *sizes], broker.brokers)
        half = results["systems"].get("hotlead", results["systems"]["ceiling"])["events_per_second"] / 2
        results["latency_rates"] = [*args.latency_rates, half]
        if not args.no_latency:
            rates = results["latency_rates"]
            one_hop, two_hops = broker_latency(args, broker, rates, half)
            results["systems"]["ceiling"]["latency"] = one_hop
            by_system = {}
            for system in order[1:]:
                redis.cli("FLUSHALL")
                by_system[system] = latency(system, args, work, broker, redis, rates)
                results["systems"][system]["latency"] = by_system[system][-1]
            results["latency"] = latency_rows(results, two_hops, by_system)
        if not args.no_scaling and "hotlead" in order:
            results["scaling"] = scaling(args, work, broker, redis, order, results["systems"])
        if args.backfill_rates and "hotlead" in order:
            results["backfill"] = backfill_cost(args, work, broker, redis, args.events, results["systems"]["hotlead"])
        if args.accounts and "hotlead" in order:
            results["accounts"] = accounts_cost(args, work, broker, redis, args.events)
        if args.quick:
            results["guard"] = guard(results)
        results["targets"] = targets(results)
    finally:
        redis.stop()
        broker.stop()
    out = Path(args.out) if args.out else work if args.quick else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    md = report(results)
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stamp}.md").write_text(md)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(md)
    log(f"results in {out / (stamp + '.md')} and .json")
    failed = [n for n, r in results["systems"].items() if not r["check"]["ok"]]
    failed += [f"{r['system']} at {r['contacts']:,} contacts" for r in results.get("scaling", [])
               if not r["check"]["ok"]]
    if results.get("accounts"):
        failed += [f"hotlead in the accounts phase ({k})" for k in ("without", "with", "contacts")
                   if not results["accounts"][k]["check"]["ok"]]
    if failed:
        log(f"FAILED: scores differ from the oracle's: {', '.join(failed)}")
    for g in results.get("guard", []):
        if not g["holds"]:
            log(f"REGRESSION: {g['target']} does not hold: {g['measured']}")
    return 1 if failed or not all(g["holds"] for g in results.get("guard", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
