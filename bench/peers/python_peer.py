"""Benchmark peer: hotlead's scoring as a plain Python service, written with
confluent-kafka and redis-py the way a capable team would.

Loop, per batch of up to ``--batch-size`` events (``Consumer.consume``, which
returns when the batch is full or ``--batch-wait`` has passed: 20 ms by
default, as hotlead's own batch wait, so a quiet stream is not held back):

1. decode the protobuf events (contact id or time missing: skipped);
2. one pipelined Redis read (HMGET) of the state of the batch's contacts
   that are not in the local cache;
3. score every event in offset order (see ``common.py``), collecting the
   contacts that changed and the tier crossings;
4. one pipelined Redis write (``transaction=False``): per changed contact one
   HSET of ``{model}:s``, ``{model}:t``, ``{model}:tier`` and one ZADD to the
   model's leaderboard;
5. the alerts (``hotlead.v1.ScoreAlert``, keyed by contact id) produced to
   the alerts topic, and the producer flushed;
6. offsets committed (asynchronously; synchronously on exit).

Offsets are committed only after the batch's state and alerts are written,
so delivery is at-least-once: after a crash a batch is scored again. Alert
ids are deterministic (topic/partition/offset/model/tier/direction), so the
repeats can be dropped downstream; a re-applied event would count twice in
the score, which is the usual price of at-least-once without idempotent
state.

Choices:

* **Local state cache: on.** Kafka gives each partition (and so each
  contact, the message key) to one consumer of the group at a time, so the
  process that owns a partition can keep its contacts' state in a dict and
  read Redis only for contacts it has not seen since its assignment. The
  cache is dropped on every rebalance, when another consumer may have
  written those contacts. ``--no-cache`` turns it off (every batch then reads
  all its contacts from Redis).
* Consumer: ``auto.offset.reset=earliest``, auto commit off,
  ``fetch.wait.max.ms=100`` (a broker that answers a fetch only after that
  wait, as Tansu does, would otherwise stall each fetch for the 500 ms
  default); librdkafka's default prefetch (``queued.min.messages``) keeps
  the next batches ready while one is scored.
* Producer: ``linger.ms=5``, idempotence on.

Output: one JSON line on stdout at exit, ``{"events", "alerts", "seconds"}``
(``seconds`` is the wall time of the whole run, start-up included).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

import common  # noqa: E402


class Peer:
    def __init__(self, args, events_pb2, alerts_pb2):
        self.args = args
        self.Event = events_pb2.InteractionEvent
        self.alerts_pb2 = alerts_pb2
        self.models = common.load_rules(args.rules)
        self.scorer = common.Scorer(self.models)
        self.fields = common.state_fields(self.models)
        self.use_cache = not args.no_cache
        self.cache: dict[str, dict] = {}
        self.events = 0
        self.alerts = 0
        self.stopping = False

        self.redis = redis.Redis.from_url(args.redis_url)
        self.redis.ping()
        self.consumer = Consumer(
            {
                "bootstrap.servers": args.brokers,
                "group.id": args.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": args.fetch_wait_ms,
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": args.brokers,
                "linger.ms": 5,
                "enable.idempotence": True,
            }
        )

    # Rebalances: another consumer may have written the contacts of any
    # partition we did not hold, so the cache starts over.
    def _on_assign(self, consumer, partitions):
        self.cache.clear()

    def _on_revoke(self, consumer, partitions):
        self.cache.clear()

    def run(self, drain: common.DrainTracker | None, deadline: float | None) -> None:
        self.consumer.subscribe([self.args.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stopping:
                if drain is not None and drain.drained:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                msgs = self.consumer.consume(num_messages=self.args.batch_size, timeout=self.args.batch_wait)
                if msgs:
                    self.process(msgs, drain)
        finally:
            self.close()

    def process(self, msgs, drain: common.DrainTracker | None) -> None:
        batch = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            try:
                event = self.Event.FromString(m.value() or b"")
            except DecodeError:
                event = None
            at_ms = common.event_millis(event) if event is not None else None
            if event is not None and event.contact_id and at_ms is not None:
                batch.append((m.partition(), m.offset(), event, at_ms))

        # One pipelined read of the state of the contacts not cached.
        cache = self.cache if self.use_cache else {}
        missing = list({e.contact_id for _, _, e, _ in batch if e.contact_id not in cache})
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for contact in missing:
                pipe.hmget(common.contact_key(self.args.prefix, contact), self.fields)
            for contact, values in zip(missing, pipe.execute()):
                cache[contact] = common.parse_state(self.models, values)

        # Score in offset order.
        changed = set()
        alerts = []
        for partition, offset, event, at_ms in batch:
            states = cache[event.contact_id]
            crossings = self.scorer.apply(states, event, at_ms)
            if states:
                changed.add(event.contact_id)
            for c in crossings:
                alerts.append(
                    common.build_alert(self.alerts_pb2, self.args.topic, partition, offset, event, at_ms, c)
                )

        # One pipelined write of every changed contact.
        if changed:
            pipe = self.redis.pipeline(transaction=False)
            for contact in changed:
                common.write_state(pipe, self.args.prefix, self.models, contact, cache[contact])
            pipe.execute()

        # Alerts, delivered before the offsets are committed.
        for a in alerts:
            self._produce(a)
        if alerts:
            remaining = self.producer.flush(30)
            if remaining:
                raise RuntimeError(f"{remaining} alerts not delivered")
        self.consumer.commit(asynchronous=True)

        self.events += len(batch)
        self.alerts += len(alerts)
        if drain is not None:
            for m in msgs:
                drain.consumed(m.partition(), m.offset())

    def _produce(self, alert) -> None:
        while True:
            try:
                self.producer.produce(
                    self.args.alerts_topic,
                    key=alert.contact_id.encode(),
                    value=alert.SerializeToString(),
                    on_delivery=_check_delivery,
                )
                return
            except BufferError:
                self.producer.poll(0.1)

    def close(self) -> None:
        self.producer.flush(30)
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            # Nothing consumed since the last commit.
            if e.args[0].code() != KafkaError._NO_OFFSET:
                raise
        self.consumer.close()


def _check_delivery(err, msg) -> None:
    if err is not None:
        raise KafkaException(err)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    parser = common.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=5000, help="most events per batch")
    parser.add_argument(
        "--batch-wait", type=float, default=0.02, help="seconds a batch waits to fill (as hotlead's batch_wait)"
    )
    parser.add_argument("--no-cache", action="store_true", help="read every batch's contacts from Redis")
    args = parser.parse_args(argv)

    events_pb2, alerts_pb2 = common.load_protos(args.proto_dir, args.proto_out)
    peer = Peer(args, events_pb2, alerts_pb2)

    def stop(signum, frame):
        peer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    drain = common.DrainTracker(args.brokers, args.topic, args.group) if args.until_drained else None
    if drain is not None:
        common.log(f"python peer: draining {args.topic} up to its high watermarks, {drain.backlog} messages")
    deadline = started + args.duration if args.duration > 0 else None
    peer.run(drain, deadline)
    print(common.summary(peer.events, peer.alerts, started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
