#!/usr/bin/env bash
# The local demo, in one command: a Tansu broker and a Redis on 127.0.0.1,
# hotlead scoring with examples/rules.yaml, and `hotlead simulate` producing a
# realistic stream of events. Alerts are printed live; `hotlead notify`
# delivers them as examples/notify/routes.yaml says to a local receiver
# (scripts/notify-receiver.py), whose lines (`↳ notified ...`) appear among
# them. Ctrl-C stops everything cleanly. State and logs live in run/demo/.
#
# Environment: RATE (events/s, default 40), CONTACTS (default 500),
# SEED (default 42), PARTITIONS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

RATE="${RATE:-40}"
CONTACTS="${CONTACTS:-500}"
SEED="${SEED:-42}"
PARTITIONS="${PARTITIONS:-4}"
KAFKA_PORT=19092
REDIS_PORT=16379
HTTP_PORT=9464
NOTIFY_PORT=9465
RECEIVER_PORT=18080
CONFIG=examples/demo.toml
RUN=run/demo

scripts/setup.sh
echo "demo: building hotlead (release) ..."
cargo build --release --quiet --bin hotlead
HOTLEAD="$PWD/target/release/hotlead"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $KAFKA_PORT $REDIS_PORT $HTTP_PORT $NOTIFY_PORT $RECEIVER_PORT; do
  if port_in_use "$port"; then
    echo "demo: port $port on 127.0.0.1 is in use; stop what uses it (an earlier demo?) and try again" >&2
    exit 1
  fi
done
wait_port() {
  for _ in $(seq 1 300); do port_in_use "$1" && return 0; sleep 0.1; done
  echo "demo: $2 did not start; see $RUN/$2.log" >&2
  exit 1
}

rm -rf "$RUN"
mkdir -p "$RUN/redis" "$RUN/tansu"
REDIS_PID="" TANSU_PID="" HOTLEAD_PID="" SIM_PID="" ALERTS_PID="" NOTIFY_PID="" RECEIVER_PID="" LANE_PID=""
ACCOUNT_ALERTS_PID=""
stop() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping ..."
  [ -n "$ALERTS_PID" ] && kill -TERM "$ALERTS_PID" 2>/dev/null
  [ -n "$ACCOUNT_ALERTS_PID" ] && kill -TERM "$ACCOUNT_ALERTS_PID" 2>/dev/null
  [ -n "$SIM_PID" ] && kill -TERM "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
  [ -n "$LANE_PID" ] && kill -TERM "$LANE_PID" 2>/dev/null && wait "$LANE_PID" 2>/dev/null
  [ -n "$NOTIFY_PID" ] && kill -TERM "$NOTIFY_PID" 2>/dev/null && wait "$NOTIFY_PID" 2>/dev/null
  [ -n "$RECEIVER_PID" ] && kill -TERM "$RECEIVER_PID" 2>/dev/null && { wait "$RECEIVER_PID" 2>/dev/null || true; }
  [ -n "$HOTLEAD_PID" ] && kill -TERM "$HOTLEAD_PID" 2>/dev/null && wait "$HOTLEAD_PID" 2>/dev/null
  [ -n "$TANSU_PID" ] && kill -TERM "$TANSU_PID" 2>/dev/null && wait "$TANSU_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  echo "demo: stopped; logs and data are in $RUN/"
  exit 0
}
trap stop EXIT INT TERM

# Services run in sessions of their own, so Ctrl-C reaches only this script,
# which stops them in order: the producer, hotlead (drains and commits), then
# the broker and Redis.
(cd "$RUN/redis" && exec setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir . \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction >../redis.log 2>&1) &
REDIS_PID=$!
(cd "$RUN/tansu" && exec setsid tansu broker \
  --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine sqlite://tansu.db >../tansu.log 2>&1) &
TANSU_PID=$!
wait_port "$REDIS_PORT" redis
wait_port "$KAFKA_PORT" tansu
echo "demo: Redis on 127.0.0.1:$REDIS_PORT, Tansu on 127.0.0.1:$KAFKA_PORT"

"$HOTLEAD" -c "$CONFIG" topics --partitions "$PARTITIONS" 2>"$RUN/topics.log"
setsid "$HOTLEAD" -c "$CONFIG" run >"$RUN/hotlead.log" 2>&1 &
HOTLEAD_PID=$!
wait_port "$HTTP_PORT" hotlead
scripts/notify-receiver.py "$RECEIVER_PORT" examples/notify/demo-webhook.secret 2>"$RUN/receiver.log" &
RECEIVER_PID=$!
wait_port "$RECEIVER_PORT" receiver
setsid "$HOTLEAD" -c "$CONFIG" notify >"$RUN/notify.log" 2>&1 &
NOTIFY_PID=$!
wait_port "$NOTIFY_PORT" notify
setsid "$HOTLEAD" -c "$CONFIG" simulate --rate "$RATE" --contacts "$CONTACTS" --seed "$SEED" \
  --poison-every 500 >"$RUN/simulate.log" 2>&1 &
SIM_PID=$!
# A candidate model, tried beside the live one in a lane of its own: it scores
# the stream from its start and follows it; its alerts go to shadow-alerts.
setsid "$HOTLEAD" -c "$CONFIG" backfill --rules examples/engagement-v2.yaml --model engagement-v2 \
  >"$RUN/backfill.log" 2>&1 &
LANE_PID=$!

cat <<MSG
demo: hotlead is scoring $RATE events/s from $CONTACTS simulated contacts (seed $SEED).
demo: hot-leads board: http://127.0.0.1:$HTTP_PORT/board   metrics: http://127.0.0.1:$HTTP_PORT/metrics
demo: hotlead notify delivers hot and sales-ready leads (examples/notify/routes.yaml) to a receiver
demo: on 127.0.0.1:$RECEIVER_PORT; its lines start with ↳. Notifier metrics: http://127.0.0.1:$NOTIFY_PORT/metrics
demo: rules workbench: http://127.0.0.1:$HTTP_PORT/board/rules (models in words, check and preview a change)
demo: a candidate model, engagement-v2 (examples/engagement-v2.yaml), is back-filled as a shadow beside it:
demo: compare: http://127.0.0.1:$HTTP_PORT/compare?live=engagement&shadow=engagement-v2   (or: hotlead compare engagement engagement-v2)
demo: examples/models.yaml alerts sales on hot and sales-ready only; warm and fit move tiers silently
demo: accounts (B2B): the simulator sends buying groups; engagement rolls up into account scores (board: Accounts
demo: panel, or hotlead account ACCOUNT); account alerts below name the account and its driving contacts
demo: logs: $RUN/*.log   Ctrl-C stops everything.
demo: alerts as they happen (tier entered, score, and the rules that drove it):

MSG
"$HOTLEAD" -c "$CONFIG" alerts --accounts 2>>"$RUN/alerts.log" &
ACCOUNT_ALERTS_PID=$!
"$HOTLEAD" -c "$CONFIG" alerts 2>>"$RUN/alerts.log" &
ALERTS_PID=$!
wait "$ALERTS_PID"
