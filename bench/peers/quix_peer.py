"""Benchmark peer: hotlead's scoring as a Quix Streams application.

Pipeline (one StreamingDataFrame over the input topic, message key = contact id):

    events ──filter(valid)──apply(score, stateful)──┬─ apply(alerts, expand) ─ to_topic(alerts)
                                                    └─ filter(changed) ─ sink(RedisStateSink)

* **State: Quix's own state store** (RocksDB, keyed by the message key, so
  per contact), the idiomatic home of per-key state in Quix. Each contact's
  state is one JSON value ``{model: [s, t, tier]}``. Redis is the output:
  the same layout as hotlead's and the Python peer's (``{prefix}:c:{id}``
  hash with ``{model}:s|t|tier``, ``{prefix}:lb:{model}`` leaderboard), never
  read back.
* **Redis writes are batched** with Quix's ``BatchingSink``: records are
  kept per partition and written at each checkpoint (``--commit-interval``
  seconds, 1 s by default) in one pipeline (``transaction=False``), one HSET
  and one ZADD per contact changed since the previous checkpoint (the
  latest state wins).
* Alerts (``hotlead.v1.ScoreAlert``, key = contact id) go to the alerts
  topic through ``to_topic`` with Quix's ``ProtobufSerializer``; events are
  read with ``ProtobufDeserializer(to_dict=False)``, so rows are protobuf
  messages, not dicts.
* Delivery: Quix's at-least-once checkpoints: at each checkpoint the
  producer is flushed, sinks are written, then offsets are committed.

Tansu (the local Kafka-protocol broker, 0.6.0) and Quix:

* **Changelog topics: off by default** (``use_changelog_topics=False``;
  ``--changelog on`` turns them on). Quix backs a state store with a
  changelog topic (``changelog__<group>--<topic>--default``, created with
  ``cleanup.policy=compact``), and Tansu accepts and works with it,
  including that config. But Quix stamps every changelog record with
  headers (the source offsets), and Tansu keeps record headers in an
  unindexed SQLite table that every fetch scans: after a 100k-event run
  with changelogs, fetching the same 100k events from *any* topic of the
  broker is about 10x slower (a few thousand headered records already make
  it 5x slower). That would slow every system run after Quix on the same
  broker, and Quix itself. Without changelogs the state lives only in the
  local RocksDB directory (``--state-dir``; by default a temporary one,
  removed at exit): right for a benchmark run that drains a backlog once
  with a fresh consumer group, not for a restartable deployment, which
  needs ``--changelog on`` or a kept ``--state-dir``.
* ``fetch.wait.max.ms=100`` for the consumer: Tansu holds every fetch for
  ``fetch.wait.max.ms`` even when records arrive sooner (the 500 ms default
  puts half a second into every event-to-alert path).
* Quix reads the input topic's configuration at start-up to size its
  changelog topics like their source, and needs ``retention.ms`` among it
  (even with changelogs off). Tansu's DescribeConfigs returns only the
  configs a topic was created with (no broker defaults): ``hotlead topics``
  sets ``retention.ms``, and for a topic created without it the peer
  assumes Kafka's default (7 days).

Exit: with ``--until-drained`` the app stops once every partition is
processed up to the high watermark read at start (Quix then commits a last
checkpoint); otherwise on SIGTERM/SIGINT (handled by Quix, which also
checkpoints) or after ``--duration``. One JSON line on stdout at exit:
``{"events", "alerts", "seconds"}`` (wall time of the whole run).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from quixstreams import Application, message_context  # noqa: E402
from quixstreams.models.serializers.exceptions import SerializationError  # noqa: E402
from quixstreams.models.serializers.protobuf import ProtobufDeserializer, ProtobufSerializer  # noqa: E402
from quixstreams.sinks import BatchingSink, SinkBatch  # noqa: E402

import common  # noqa: E402

STATE_KEY = "models"


class RedisStateSink(BatchingSink):
    """Writes contacts' scores to Redis in hotlead's layout, one pipeline
    per checkpoint and partition. Records are ``(contact_id, states)``."""

    def __init__(self, url: str, prefix: str, models: list[common.Model]):
        super().__init__()
        self._url = url
        self._prefix = prefix
        self._models = models
        self._client: redis.Redis | None = None

    def setup(self):
        self._client = redis.Redis.from_url(self._url)
        self._client.ping()

    def write(self, batch: SinkBatch):
        latest = {}
        for item in batch:
            contact, states = item.value
            latest[contact] = states
        pipe = self._client.pipeline(transaction=False)
        for contact, states in latest.items():
            common.write_state(pipe, self._prefix, self._models, contact, states)
        pipe.execute()


def build_app(args, state_dir: str, events_pb2, alerts_pb2, drain, counts: dict) -> Application:
    """The Quix application: topics, the scoring dataframe, its outputs."""
    models = common.load_rules(args.rules)
    scorer = common.Scorer(models)
    app: Application | None = None

    def on_consumer_error(exc, message, logger) -> bool:
        # An undecodable event is skipped, as hotlead would dead-letter it.
        return isinstance(exc, SerializationError)

    def on_processed(topic: str, partition: int, offset: int) -> None:
        if drain is not None and topic == args.topic:
            drain.consumed(partition, offset)
            if drain.drained:
                app.stop()

    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        consumer_extra_config={"fetch.wait.max.ms": args.fetch_wait_ms},
        producer_extra_config={"linger.ms": 5},
        state_dir=state_dir,
        use_changelog_topics=args.changelog == "on",
        on_consumer_error=on_consumer_error,
        on_message_processed=on_processed,
        loglevel="WARNING",
    )
    source = app.topic(
        args.topic,
        key_deserializer="str",
        value_deserializer=ProtobufDeserializer(msg_type=events_pb2.InteractionEvent, to_dict=False),
    )
    # Quix sizes its changelog topics like the input topic and reads the
    # input's retention.ms for that. Tansu describes only the configs a
    # topic was created with (``hotlead topics`` sets retention.ms); for a
    # topic created without, use Kafka's default of 7 days.
    source.broker_config.extra_config.setdefault("retention.ms", str(7 * 24 * 3600 * 1000))
    alerts_topic = app.topic(
        args.alerts_topic,
        key_serializer="str",
        value_serializer=ProtobufSerializer(msg_type=alerts_pb2.ScoreAlert),
    )

    def valid(event) -> bool:
        return bool(event.contact_id) and event.HasField("occurred_at")

    def score(event, state):
        at_ms = common.event_millis(event)
        states = state.get(STATE_KEY) or {}
        crossings = scorer.apply(states, event, at_ms)
        if states:
            state.set(STATE_KEY, states)
        ctx = message_context()
        alerts = [
            common.build_alert(alerts_pb2, args.topic, ctx.partition, ctx.offset, event, at_ms, c)
            for c in crossings
        ]
        counts["events"] += 1
        counts["alerts"] += len(alerts)
        return {"contact_id": event.contact_id, "states": states, "alerts": alerts}

    sdf = app.dataframe(source)
    sdf = sdf.filter(valid)
    sdf = sdf.apply(score, stateful=True)
    sdf.apply(lambda r: r["alerts"], expand=True).to_topic(alerts_topic)
    sdf.filter(lambda r: bool(r["states"])).apply(lambda r: (r["contact_id"], r["states"])).sink(
        RedisStateSink(args.redis_url, args.prefix, models)
    )
    return app


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    parser = common.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--commit-interval", type=float, default=1.0, help="seconds between checkpoints")
    parser.add_argument(
        "--changelog", choices=("on", "off"), default="off", help="back the state with changelog topics"
    )
    parser.add_argument("--state-dir", default=None, help="RocksDB state directory (default: a temporary one)")
    args = parser.parse_args(argv)

    events_pb2, alerts_pb2 = common.load_protos(args.proto_dir, args.proto_out)
    counts = {"events": 0, "alerts": 0}
    drain = common.DrainTracker(args.brokers, args.topic, args.group) if args.until_drained else None
    if drain is not None and drain.drained:
        print(common.summary(0, 0, started), flush=True)
        return 0

    state_dir = args.state_dir or tempfile.mkdtemp(prefix="quix-peer-state-")
    try:
        app = build_app(args, state_dir, events_pb2, alerts_pb2, drain, counts)
        if args.duration > 0:
            timer = threading.Timer(max(0.0, started + args.duration - time.monotonic()), app.stop)
            timer.daemon = True
            timer.start()
        if drain is not None:
            common.log(f"quix peer: draining {args.topic} up to its high watermarks, {drain.backlog} messages")
        app.run()
    finally:
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
    print(common.summary(counts["events"], counts["alerts"], started), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
