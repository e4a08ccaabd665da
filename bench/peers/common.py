"""What both benchmark peers share: command line, rules, protobuf classes,
the scoring state machine, the Redis layout and alert building.

The peers (``python_peer.py`` and ``quix_peer.py``) differ only in how they
move data: batches over confluent-kafka and redis-py, or a Quix Streams
application. Everything that decides a score lives here, so both compute
exactly the same numbers.

Scoring, per contact and model, keeps a behaviour score ``s`` at time ``t``
(ms, event time of the latest event applied). An event at ``e`` whose
matching rules give points ``p1, p2, ...``:

* no state yet and no rule matches: nothing happens;
* no state yet: ``s = 0, t = e``;
* ``e > t``: ``s *= 2**(-(e - t) / 1000 / H)``, ``t = e``; if that decay alone
  took the score below the current tier's exit, the contact cools first
  (a COOLED alert dated at the event);
* each matching rule, in file order: ``s += p * f`` with ``f = 1`` when
  ``e >= t`` and ``2**(-(t - e) / 1000 / H)`` for a late event (``t`` never
  moves back);
* tiers: up to the highest tier whose ``enter`` the score reaches (HEATED),
  else down while the score is below the current tier's ``exit`` (COOLED).

Floats are IEEE doubles, and the operations are done in the same order as
hotlead's, so the stored scores are bit-for-bit the same.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

#: Leaderboard scores are ``log2(s) + (t - E) / 1000 / H`` with this ``E``
#: (2024-01-01T00:00:00Z): ordering by it orders contacts by their current
#: decayed score at any moment, without rewriting the set as time passes.
LEADERBOARD_EPOCH_MS = 1_704_067_200_000

#: The ``interaction`` oneof field names of ``InteractionEvent``.
KINDS = (
    "page_view",
    "form_submission",
    "webinar_attendance",
    "email_engagement",
    "content_download",
    "profile_update",
    "custom",
)

REPO = Path(__file__).resolve().parents[2]

HEATED = "heated"
COOLED = "cooled"


# --------------------------------------------------------------------------
# Command line


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The command line both peers take; a peer may add options of its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--brokers", required=True, help="Kafka bootstrap servers")
    p.add_argument("--topic", default="interactions", help="input topic")
    p.add_argument("--group", required=True, help="consumer group")
    p.add_argument("--redis-url", required=True, help="e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", required=True, help="prefix of every Redis key")
    p.add_argument("--alerts-topic", default="sales-alerts", help="topic alerts go to")
    p.add_argument("--rules", default=str(REPO / "bench" / "rules.yaml"), help="rules file")
    p.add_argument("--proto-out", required=True, help="scratch directory for the generated protobuf code")
    p.add_argument("--proto-dir", default=str(REPO / "proto"), help="root of the .proto files")
    p.add_argument(
        "--until-drained",
        action="store_true",
        help="exit once the topic is consumed up to the high watermarks read at start",
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    p.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=100,
        help="the consumer's fetch.wait.max.ms (a Tansu broker holds every fetch this long)",
    )
    return p


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Protobuf classes, generated at start-up


def load_protos(proto_dir: str, out_dir: str):
    """Generates the Python classes of hotlead.v1 into ``out_dir`` with
    grpc_tools.protoc and imports them. Returns ``(events_pb2, alerts_pb2)``."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = ["hotlead/v1/events.proto", "hotlead/v1/alerts.proto"]
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", *sources]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc}) on {proto_dir}")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    events = importlib.import_module("hotlead.v1.events_pb2")
    alerts = importlib.import_module("hotlead.v1.alerts_pb2")
    return events, alerts


# --------------------------------------------------------------------------
# Rules: the subset of hotlead's rules files the benchmark uses


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    url_prefix: str | None
    points: float


@dataclass(frozen=True)
class Tier:
    name: str
    enter: float
    exit: float


@dataclass(frozen=True)
class Model:
    name: str
    version: int
    half_life_secs: float
    base_tier: str
    tiers: tuple[Tier, ...]
    rules: tuple[Rule, ...]

    def tier_name(self, index: int) -> str:
        """Tier 0 is the base tier, tier ``i > 0`` is ``tiers[i - 1]``."""
        return self.base_tier if index == 0 else self.tiers[index - 1].name

    def tier_index(self, name: str) -> int:
        """Index of a tier by name; 0 for the base tier or an unknown name."""
        for i, t in enumerate(self.tiers):
            if t.name == name:
                return i + 1
        return 0


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_half_life(text: str) -> float:
    """``14d``, ``36h``, ``90m``, ``45s`` (or several, ``1d12h``) in seconds."""
    parts = re.findall(r"(\d+)\s*([dhms])", str(text))
    if not parts or re.sub(r"\s|\d+\s*[dhms]", "", str(text)):
        raise ValueError(f"half_life `{text}`: write e.g. 14d, 36h, 90m or 45s")
    secs = sum(int(n) * _UNITS[u] for n, u in parts)
    if secs <= 0:
        raise ValueError("half_life must be greater than zero")
    return float(secs)


def _only(d: dict, allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise ValueError(f"{where}: {', '.join(sorted(extra))} not supported by the benchmark peers")


def load_rules(path: str) -> list[Model]:
    """Reads a rules file. Anything beyond the subset the peers implement
    (caps, fit rules, requirements, other conditions) is refused, so a
    changed file cannot silently score differently from hotlead."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    _only(doc, {"models"}, "rules file")
    models = []
    for i, m in enumerate(doc["models"]):
        where = f"models[{i}]"
        _only(m, {"name", "version", "half_life", "base_tier", "tiers", "rules"}, where)
        tiers = tuple(Tier(str(t["name"]), float(t["enter"]), float(t["exit"])) for t in m.get("tiers") or [])
        for t in tiers:
            if t.exit > t.enter:
                raise ValueError(f"{where}: tier {t.name} exits above its enter")
        rules = []
        for j, r in enumerate(m.get("rules") or []):
            _only(r, {"id", "when", "points"}, f"{where}.rules[{j}]")
            when = dict(r["when"])
            kind = when.pop("kind")
            if kind not in KINDS:
                raise ValueError(f"{where}.rules[{j}]: unknown kind {kind}")
            prefix = None
            if "url" in when:
                url = when.pop("url")
                if kind != "page_view" or not isinstance(url, dict) or set(url) != {"prefix"}:
                    raise ValueError(f"{where}.rules[{j}]: only page_view url: {{prefix: ...}} is supported")
                prefix = str(url["prefix"])
            _only(when, set(), f"{where}.rules[{j}].when")
            rules.append(Rule(str(r["id"]), kind, prefix, float(r["points"])))
        models.append(
            Model(
                name=str(m["name"]),
                version=int(m.get("version", 1)),
                half_life_secs=parse_half_life(m["half_life"]),
                base_tier=str(m.get("base_tier", "cold")),
                tiers=tiers,
                rules=tuple(rules),
            )
        )
    return models


# --------------------------------------------------------------------------
# Scoring


class Crossing(NamedTuple):
    model: Model
    direction: str  # HEATED or COOLED
    from_tier: int
    to_tier: int
    score: float
    threshold: float


def decay_factor(dt_ms: int, half_life_secs: float) -> float:
    """What points are worth after ``dt_ms``: ``2**(-dt / 1000 / H)``."""
    return math.exp2(-dt_ms / 1000.0 / half_life_secs)


def event_millis(event) -> int | None:
    """``occurred_at`` in ms since the epoch, or None when it is missing."""
    if not event.HasField("occurred_at"):
        return None
    ts = event.occurred_at
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _tier_up(model: Model, tier: int, score: float) -> int:
    while tier < len(model.tiers) and score >= model.tiers[tier].enter:
        tier += 1
    return tier


def _tier_down(model: Model, tier: int, score: float) -> int:
    while tier > 0 and score < model.tiers[tier - 1].exit:
        tier -= 1
    return tier


class Scorer:
    """Applies events to a contact's state.

    A contact's state is a dict ``{model name: [s, t, tier index]}`` (plain
    lists, so it serialises as JSON for Quix's state store as well)."""

    def __init__(self, models: list[Model]):
        self.models = models
        # Rules by kind, in file order, for a quick match.
        self._by_kind = {
            m.name: {k: [r for r in m.rules if r.kind == k] for k in KINDS} for m in models
        }

    def apply(self, states: dict, event, at_ms: int) -> list[Crossing]:
        """Applies one event at ``at_ms``, updating ``states`` in place, and
        returns the tier crossings it caused."""
        kind = event.WhichOneof("interaction")
        url = event.page_view.url if kind == "page_view" else None
        crossings: list[Crossing] = []
        for model in self.models:
            points = [
                r.points
                for r in self._by_kind[model.name].get(kind, ())
                if r.url_prefix is None or (url is not None and url.startswith(r.url_prefix))
            ]
            st = states.get(model.name)
            if st is None:
                if not points:
                    continue
                st = states[model.name] = [0.0, at_ms, 0]
            s, t, tier = st
            h = model.half_life_secs
            if at_ms > t:
                s *= decay_factor(at_ms - t, h)
                t = at_ms
                # Decay since the previous event may have cooled the contact.
                down = _tier_down(model, tier, s)
                if down < tier:
                    crossings.append(Crossing(model, COOLED, tier, down, s, model.tiers[down].exit))
                    tier = down
            factor = 1.0 if at_ms >= t else decay_factor(t - at_ms, h)
            for p in points:
                if p != 0.0:
                    s += p * factor
            up = _tier_up(model, tier, s)
            if up > tier:
                crossings.append(Crossing(model, HEATED, tier, up, s, model.tiers[up - 1].enter))
                tier = up
            else:
                down = _tier_down(model, tier, s)
                if down < tier:
                    crossings.append(Crossing(model, COOLED, tier, down, s, model.tiers[down].exit))
                    tier = down
            st[0], st[1], st[2] = s, t, tier
        return crossings


# --------------------------------------------------------------------------
# Redis layout


def contact_key(prefix: str, contact_id: str) -> str:
    return f"{prefix}:c:{contact_id}"


def leaderboard_key(prefix: str, model: Model) -> str:
    return f"{prefix}:lb:{model.name}"


def state_fields(models: list[Model]) -> list[str]:
    """The hash fields that hold a contact's state, in the order
    :func:`parse_state` reads them."""
    return [f"{m.name}:{f}" for m in models for f in ("s", "t", "tier")]


def parse_state(models: list[Model], values: list) -> dict:
    """A contact's state from the values of :func:`state_fields`."""
    states = {}
    for i, m in enumerate(models):
        s, t, tier = values[3 * i : 3 * i + 3]
        if s is not None and t is not None:
            name = tier.decode() if isinstance(tier, bytes) else (tier or "")
            states[m.name] = [float(s), int(t), m.tier_index(name)]
    return states


def leaderboard_score(model: Model, s: float, t: int) -> float | None:
    """``log2(s) + (t - E) / 1000 / H``; None when there is nothing to rank."""
    if s <= 0.0:
        return None
    return math.log2(s) + (t - LEADERBOARD_EPOCH_MS) / 1000.0 / model.half_life_secs


def write_state(pipe, prefix: str, models: list[Model], contact_id: str, states: dict) -> None:
    """Queues a contact's hash fields and leaderboard entries on a pipeline."""
    fields = {}
    for m in models:
        st = states.get(m.name)
        if st is None:
            continue
        s, t, tier = st
        fields[f"{m.name}:s"] = repr(s)
        fields[f"{m.name}:t"] = str(t)
        fields[f"{m.name}:tier"] = m.tier_name(tier)
        rank = leaderboard_score(m, s, t)
        if rank is None:
            pipe.zrem(leaderboard_key(prefix, m), contact_id)
        else:
            pipe.zadd(leaderboard_key(prefix, m), {contact_id: rank})
    if fields:
        pipe.hset(contact_key(prefix, contact_id), mapping=fields)


# --------------------------------------------------------------------------
# Alerts


def alert_id(topic: str, partition: int, offset: int, c: Crossing) -> str:
    """Deterministic: the same crossing of the same event gets the same id,
    so a consumer can drop the repeats at-least-once delivery makes."""
    key = f"{topic}/{partition}/{offset}/{c.model.name}/{c.model.tier_name(c.to_tier)}/{c.direction}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def build_alert(alerts_pb2, topic: str, partition: int, offset: int, event, at_ms: int, c: Crossing):
    """The ScoreAlert for a crossing caused by ``event`` (at ``at_ms``)."""
    direction = alerts_pb2.ScoreAlert.HEATED if c.direction == HEATED else alerts_pb2.ScoreAlert.COOLED
    alert = alerts_pb2.ScoreAlert(
        alert_id=alert_id(topic, partition, offset, c),
        contact_id=event.contact_id,
        account_id=event.account_id,
        model=c.model.name,
        model_version=c.model.version,
        direction=direction,
        tier=c.model.tier_name(c.to_tier),
        previous_tier=c.model.tier_name(c.from_tier),
        score=c.score,
        threshold=c.threshold,
        trigger_event_id=event.event_id,
    )
    alert.crossed_at.seconds = at_ms // 1000
    alert.crossed_at.nanos = (at_ms % 1000) * 1_000_000
    return alert


# --------------------------------------------------------------------------
# Draining a backlog


class DrainTracker:
    """Knows when a topic has been consumed up to the high watermarks read
    at start. Partitions whose group offset already reaches them (or that
    are empty) count as drained from the start."""

    def __init__(self, brokers: str, topic: str, group: str):
        from confluent_kafka import Consumer, TopicPartition

        probe = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
        try:
            meta = probe.list_topics(topic, timeout=10)
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                raise SystemExit(f"topic {topic} not found")
            tps = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
            committed = {tp.partition: tp.offset for tp in probe.committed(tps, timeout=10)}
            self.high: dict[int, int] = {}
            #: Messages left to process at start.
            self.backlog = 0
            for tp in tps:
                low, high = probe.get_watermark_offsets(tp, timeout=10, cached=False)
                start = committed.get(tp.partition, -1)
                start = low if start < 0 else start
                if start < high:
                    self.high[tp.partition] = high
                    self.backlog += high - start
        finally:
            probe.close()

    def consumed(self, partition: int, offset: int) -> None:
        """Records that ``offset`` of ``partition`` has been processed."""
        high = self.high.get(partition)
        if high is not None and offset + 1 >= high:
            del self.high[partition]

    @property
    def drained(self) -> bool:
        return not self.high


def summary(events: int, alerts: int, started: float) -> str:
    """The JSON line a peer prints on exit."""
    import json

    return json.dumps({"events": events, "alerts": alerts, "seconds": round(time.monotonic() - started, 3)})
