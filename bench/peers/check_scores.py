"""Checks that the benchmark peers score exactly like hotlead.

1. ``hotlead simulate --jsonl`` writes a seeded stream of events to a file
   (``--shuffle-window N`` shuffles it within windows of N events, so that
   some events arrive after later ones and take the late-event path);
2. ``hotlead rules test`` scores that file offline: the oracle of every
   contact's score (printed to 3 decimals), tier and every tier crossing;
3. the events are produced, keyed by contact id, to a fresh topic;
4. each peer drains that topic (``--until-drained``) into Redis under its own
   prefix and its own alerts topic;
5. optionally (``--hotlead-run``, on by default) ``hotlead run`` drains the
   same topic too, with the cooling sweep off, so its Redis state is an
   exact oracle for ``s`` and ``t`` to the last bit;
6. every peer's Redis state, leaderboard and alerts are compared:
   - contacts: the same set as the oracle's;
   - ``{model}:s``: within 0.0005 of ``rules test`` (its print precision)
     and equal to hotlead's stored score to a relative 1e-9 (the largest
     relative difference is reported; it is expected to be 0);
   - ``{model}:t`` equal to hotlead's, ``{model}:tier`` equal to the oracle's;
   - leaderboard score = ``log2(s) + (t - E)/1000/H`` and equal to hotlead's;
   - alerts: the same multiset of (contact, model, direction, from, to) as
     the oracle's crossings, unique alert ids, and ``crossed_at`` and
     ``trigger_event_id`` naming an event of that contact.

Usage (a broker and a Redis of your own):

    python bench/peers/check_scores.py --brokers 127.0.0.1:39092 \\
        --redis-url redis://127.0.0.1:36379/0 --total 100000 --contacts 20000

Exits non-zero when any check fails; prints one summary line per peer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from google.protobuf import json_format  # noqa: E402

import common  # noqa: E402

PEERS = {"python": "python_peer.py", "quix": "quix_peer.py"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--hotlead", default=str(common.REPO / "target" / "release" / "hotlead"), help="hotlead binary")
    p.add_argument("--rules", default=str(common.REPO / "bench" / "rules.yaml"))
    p.add_argument("--peers", default="python,quix", help="comma-separated: python, quix")
    p.add_argument("--total", type=int, default=20000, help="events")
    p.add_argument("--contacts", type=int, default=5000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument(
        "--shuffle-window",
        type=int,
        default=0,
        help="shuffle the events within windows of this many, so some arrive late (0: in time order)",
    )
    p.add_argument("--workdir", default=None, help="scratch directory (default: a new temporary one)")
    p.add_argument("--no-hotlead-run", dest="hotlead_run", action="store_false", help="skip the exact oracle")
    p.add_argument("--keep", action="store_true", help="leave the Redis keys of the run in place")
    p.add_argument("--peer-arg", action="append", default=[], help="extra argument for the peers (repeatable)")
    return p.parse_args()


# --------------------------------------------------------------------------
# The oracle: hotlead rules test


class Oracle:
    """What ``hotlead rules test`` printed: per (contact, model) the score
    and tier, and the crossings."""

    ROW = re.compile(r"^(\S+)\s+(\S+)\s+(-?[0-9.]+)\s+(\S+)(?:\s+.*)?$")
    CROSSING = re.compile(r"(HEATED|COOLED)\s+\S+\s+(\S+)\s+\(.*?\)\s+(\S+)\s+v\d+:\s+(\S+)\s+→\s+(\S+)")

    def __init__(self, text: str):
        self.scores: dict[tuple[str, str], tuple[float, str]] = {}
        self.crossings: Counter = Counter()
        section = "table"
        for line in text.splitlines():
            if line.startswith("contact "):
                continue
            if line.startswith("crossings ("):
                section = "crossings"
                self.crossings_total = int(line.split("(")[1].split(")")[0])
                continue
            if not line.strip():
                continue
            if section == "table":
                m = self.ROW.match(line)
                if m is None:
                    raise ValueError(f"unexpected rules test line: {line!r}")
                contact, model, score, tier = m.groups()
                self.scores[(contact, model)] = (float(score), tier)
            else:
                m = self.CROSSING.search(line)
                if m is None:
                    raise ValueError(f"unexpected crossing line: {line!r}")
                direction, contact, model, frm, to = m.groups()
                self.crossings[(contact, model, direction.lower(), frm, to)] += 1
        if sum(self.crossings.values()) != self.crossings_total:
            raise ValueError("could not read every crossing of rules test")


# --------------------------------------------------------------------------
# Events


def event_from_json(line: str, events_pb2):
    """One line of ``hotlead simulate --jsonl`` as an InteractionEvent."""
    d = json.loads(line)
    at = d.get("occurred_at")
    if isinstance(at, int):
        d["occurred_at"] = datetime.fromtimestamp(at / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    email = d.get("email_engagement")
    if email and "action" in email:
        email["action"] = email["action"].upper()
    return json_format.ParseDict(d, events_pb2.InteractionEvent())


def create_topics(brokers: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    # The configs ``hotlead topics`` sets.
    config = {"retention.ms": "604800000", "retention.bytes": "-1"}
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1, config=config) for n in names]
    )
    for name, f in futures.items():
        f.result(30)
    # Wait until the metadata shows them.
    for _ in range(50):
        md = admin.list_topics(timeout=10)
        if all(n in md.topics and len(md.topics[n].partitions) == partitions for n in names):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {names} did not appear")


def produce(brokers: str, topic: str, events) -> dict[int, int]:
    """Produces events keyed by contact id; returns messages per partition."""
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
    counts: Counter = Counter()
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            counts[msg.partition()] += 1

    for e in events:
        while True:
            try:
                producer.produce(topic, key=e.contact_id.encode(), value=e.SerializeToString(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} events not produced: {errors[0]}")
    return dict(counts)


def read_topic(brokers: str, topic: str, alerts_pb2) -> list:
    """Every message of a topic, decoded as ScoreAlert."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"check-read-{time.time_ns()}", "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    tps = []
    highs = {}
    for p in md.topics[topic].partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        if high > low:
            tps.append(TopicPartition(topic, p, low))
            highs[p] = high
    out = []
    if tps:
        c.assign(tps)
        deadline = time.monotonic() + 60
        while highs and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error():
                    continue
                a = alerts_pb2.ScoreAlert.FromString(m.value())
                if m.key().decode() != a.contact_id:
                    raise AssertionError(f"alert keyed {m.key()!r}, contact {a.contact_id}")
                out.append(a)
                if m.offset() + 1 >= highs.get(m.partition(), 0):
                    highs.pop(m.partition(), None)
    c.close()
    return out


# --------------------------------------------------------------------------
# Running the systems


def run_peer(name: str, args, topic: str, alerts_topic: str, prefix: str, proto_out: str) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parent / PEERS[name]),
        "--brokers", args.brokers,
        "--topic", topic,
        "--group", f"{prefix}-group",
        "--redis-url", args.redis_url,
        "--prefix", prefix,
        "--alerts-topic", alerts_topic,
        "--rules", args.rules,
        "--proto-out", proto_out,
        "--until-drained",
        *args.peer_arg,
    ]  # fmt: skip
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{name} peer exited {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_hotlead(args, topic: str, workdir: Path, highs: dict[int, int]) -> float:
    """Runs ``hotlead run`` until it has applied every event; returns seconds."""
    config = workdir / "hotlead.toml"
    config.write_text(
        f"""
[kafka]
"bootstrap.servers" = "{args.brokers}"
"group.id" = "check-hotlead-{topic}"

[topics]
input = "{topic}"
alerts = "{topic}-hotlead-alerts"
dead_letter = "{topic}-dlq"

[redis]
url = "{args.redis_url}"

[rules]
path = "{args.rules}"

[pipeline]
sweep_interval = "0s"

[http]
listen = ""
"""
    )
    r = redis.Redis.from_url(args.redis_url)
    started = time.monotonic()
    log = open(workdir / "hotlead.log", "w")
    proc = subprocess.Popen([args.hotlead, "-c", str(config), "run"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while True:
            wms = {p: r.get(f"hl:{{{topic}:{p}}}:wm") for p in highs}
            if all(v is not None and int(v) + 1 >= highs[p] for p, v in wms.items()):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"hotlead run exited {proc.returncode}; see {workdir / 'hotlead.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("hotlead run did not drain the topic in time")
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()


# --------------------------------------------------------------------------
# Comparing


def hotlead_state(r, topic: str, partitions: int, models) -> tuple[dict, dict]:
    """hotlead's stored (s, t) per (contact, model) and leaderboard scores."""
    state, board = {}, {}
    fields = common.state_fields(models)
    for p in range(partitions):
        tag = f"hl:{{{topic}:{p}}}"
        keys = list(r.scan_iter(match=f"{tag}:c:*", count=1000))
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, fields)
        for k, values in zip(keys, pipe.execute()):
            contact = k.decode()[len(tag) + 3 :]
            for i, m in enumerate(models):
                s, t = values[3 * i], values[3 * i + 1]
                if s is not None:
                    state[(contact, m.name)] = (float(s), int(t))
        for m in models:
            for member, score in r.zrange(f"{tag}:lb:{m.name}", 0, -1, withscores=True):
                board[(member.decode(), m.name)] = score
    return state, board


def compare(name, r, prefix, models, oracle: Oracle, exact, exact_board, alerts, events_by_id) -> list[str]:
    problems: list[str] = []
    fields = common.state_fields(models)
    contacts = sorted({c for c, _ in oracle.scores})
    keys = [k.decode()[len(prefix) + 3 :] for k in r.scan_iter(match=f"{prefix}:c:*", count=1000)]
    if sorted(keys) != contacts:
        problems.append(f"contacts: {len(keys)} in Redis, {len(contacts)} in the oracle")
    pipe = r.pipeline(transaction=False)
    for c in contacts:
        pipe.hmget(common.contact_key(prefix, c), fields)
    stored = dict(zip(contacts, pipe.execute()))
    max_abs = 0.0
    max_rel = 0.0
    exact_checked = 0
    for (contact, model_name), (score, tier) in oracle.scores.items():
        m = next(x for x in models if x.name == model_name)
        i = models.index(m)
        values = stored[contact][3 * i : 3 * i + 3]
        if values[0] is None:
            problems.append(f"{contact} {model_name}: no state")
            continue
        s, t, got_tier = float(values[0]), int(values[1]), values[2].decode()
        max_abs = max(max_abs, abs(s - score))
        if abs(s - score) > 0.0005 + 1e-9 * abs(score):
            problems.append(f"{contact} {model_name}: score {s!r}, rules test {score}")
        if got_tier != tier:
            problems.append(f"{contact} {model_name}: tier {got_tier}, rules test {tier}")
        rank = r.zscore(common.leaderboard_key(prefix, m), contact)
        want_rank = common.leaderboard_score(m, s, t)
        if (rank is None) != (want_rank is None) or (rank is not None and rank != want_rank):
            problems.append(f"{contact} {model_name}: leaderboard {rank}, expected {want_rank}")
        if exact is not None:
            hs, ht = exact.get((contact, model_name), (None, None))
            if hs is None:
                problems.append(f"{contact} {model_name}: not in hotlead's Redis")
                continue
            rel = abs(s - hs) / max(abs(hs), 1e-300)
            max_rel = max(max_rel, rel)
            if rel > 1e-9:
                problems.append(f"{contact} {model_name}: score {s!r}, hotlead {hs!r}")
            if t != ht:
                problems.append(f"{contact} {model_name}: time {t}, hotlead {ht}")
            hrank = exact_board.get((contact, model_name))
            if rank is not None and hrank is not None and abs(rank - hrank) > 1e-9 * max(1.0, abs(hrank)):
                problems.append(f"{contact} {model_name}: leaderboard {rank}, hotlead {hrank}")
            exact_checked += 1

    got = Counter(
        (a.contact_id, a.model, "heated" if a.direction == 1 else "cooled", a.previous_tier, a.tier) for a in alerts
    )
    if got != oracle.crossings:
        missing = oracle.crossings - got
        extra = got - oracle.crossings
        problems.append(f"alerts: {len(alerts)} vs {oracle.crossings_total}; missing {dict(missing)}, extra {dict(extra)}")
    ids = Counter(a.alert_id for a in alerts)
    if len(ids) != len(alerts):
        problems.append(f"alerts: {len(alerts) - len(ids)} repeated alert ids")
    for a in alerts:
        e = events_by_id.get(a.trigger_event_id)
        at = a.crossed_at.seconds * 1000 + a.crossed_at.nanos // 1_000_000
        if e is None or e.contact_id != a.contact_id or common.event_millis(e) != at:
            problems.append(f"alert {a.alert_id}: trigger {a.trigger_event_id} / crossed_at {at} do not name its event")
            break
    print(
        f"{name}: {len(oracle.scores)} scores, max |s - rules test| {max_abs:.2e}, "
        + (f"{exact_checked} exact vs hotlead run, max relative diff {max_rel:.1e}, " if exact is not None else "")
        + f"{len(alerts)} alerts (oracle {oracle.crossings_total}): "
        + ("OK" if not problems else f"{len(problems)} problems"),
        flush=True,
    )
    for p in problems[:20]:
        print(f"  {p}", flush=True)
    return problems


def main() -> int:
    args = parse_args()
    peers = [p for p in args.peers.split(",") if p]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="peer-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    proto_out = str(workdir / "proto")
    events_pb2, alerts_pb2 = common.load_protos(str(common.REPO / "proto"), proto_out)
    models = common.load_rules(args.rules)
    run_id = time.strftime("%Y%m%d%H%M%S")

    jsonl = workdir / "events.jsonl"
    subprocess.run(
        [args.hotlead, "simulate", "--jsonl", str(jsonl), "--total", str(args.total),
         "--contacts", str(args.contacts), "--seed", str(args.seed)],
        check=True,
    )  # fmt: skip
    if args.shuffle_window > 1:
        lines = jsonl.read_text().splitlines()
        rng = random.Random(args.seed)
        for i in range(0, len(lines), args.shuffle_window):
            window = lines[i : i + args.shuffle_window]
            rng.shuffle(window)
            lines[i : i + args.shuffle_window] = window
        jsonl.write_text("\n".join(lines) + "\n")
    test = subprocess.run(
        [args.hotlead, "rules", "test", args.rules, str(jsonl)], check=True, stdout=subprocess.PIPE, text=True
    )
    oracle = Oracle(test.stdout)
    events = [event_from_json(line, events_pb2) for line in jsonl.read_text().splitlines() if line.strip()]
    events_by_id = {e.event_id: e for e in events}
    print(f"oracle: {len(events)} events, {len(oracle.scores)} scores, {oracle.crossings_total} crossings", flush=True)

    topic = f"check-{run_id}"
    alert_topics = {p: f"{topic}-{p}-alerts" for p in peers}
    create_topics(args.brokers, [topic, *alert_topics.values()], args.partitions)
    if args.hotlead_run:
        create_topics(args.brokers, [f"{topic}-hotlead-alerts", f"{topic}-dlq"], args.partitions)
    t0 = time.monotonic()
    highs = produce(args.brokers, topic, events)
    print(f"produced {len(events)} events to {topic} in {time.monotonic() - t0:.1f}s", flush=True)

    r = redis.Redis.from_url(args.redis_url)
    exact = exact_board = None
    if args.hotlead_run:
        secs = run_hotlead(args, topic, workdir, highs)
        exact, exact_board = hotlead_state(r, topic, args.partitions, models)
        print(f"hotlead run: drained in {secs:.1f}s, {len(exact)} scores stored", flush=True)

    failed = False
    for name in peers:
        prefix = f"check:{run_id}:{name}"
        result = run_peer(name, args, topic, alert_topics[name], prefix, proto_out)
        rate = result["events"] / result["seconds"] if result["seconds"] else math.inf
        print(f"{name} peer: {json.dumps(result)} ({rate:,.0f} events/s)", flush=True)
        alerts = read_topic(args.brokers, alert_topics[name], alerts_pb2)
        if result["events"] != len(events):
            print(f"  {name}: {result['events']} events consumed, {len(events)} produced", flush=True)
            failed = True
        if compare(name, r, prefix, models, oracle, exact, exact_board, alerts, events_by_id):
            failed = True
        if not args.keep:
            for k in r.scan_iter(match=f"{prefix}:*", count=1000):
                r.delete(k)
    if exact is not None and not args.keep:
        for k in r.scan_iter(match=f"hl:{{{topic}:*", count=1000):
            r.delete(k)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
