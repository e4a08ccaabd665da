//! `hotlead-bench`: the Rust side of the benchmark harness (`bench/run.py`).
//!
//! - `load`: preloads the backlog (seeded Zipf activity over the contacts,
//!   event times spread over the past days, in order);
//! - `ceiling`: a consumer that only reads and decodes the backlog, the
//!   broker's ceiling for any scorer;
//! - `verify`: the oracle (hotlead's scoring core over each whole partition,
//!   in offset order) against the scores a system left in Redis;
//! - `drained`: waits until a consumer group's committed offsets reach the
//!   end of every partition (how the harness sees that a scorer is done,
//!   without reading the scorer's own state);
//! - `latency`: open-loop load at a fixed rate with event times taken at
//!   send time, and event-to-alert latency measured on the alerts; or the
//!   broker alone, over one hop (`--echo`) or two (`--relay`);
//! - `hot-path`: hotlead's hot path in-process, no broker and no Redis:
//!   decoding, scoring, the state cache's decode and the commit plan of
//!   simulated batches, with the allocations it makes per event (counted by
//!   this binary's allocator) and its CPU time per event.
//!
//! Each prints one JSON object on stdout.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use hotlead::engine::{score_partition, Message as Scored, Source};
use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{FormSubmission, InteractionEvent, ScoreAlert, WebinarAttendance};
use hotlead::rules::RuleSet;
use hotlead::score::Millis;
use hotlead::simulate::{SimConfig, Simulator};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

/// The allocator hotlead runs with, counting allocations while `COUNTING`
/// is set (for `hot-path`).
struct Counting;

static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ALLOCATED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.load(std::sync::atomic::Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(std::sync::atomic::Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(new_size as u64, std::sync::atomic::Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
#[command(about = "The Rust side of hotlead's benchmark harness")]
struct Cli {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    /// Input topic.
    #[arg(long, default_value = "interactions", global = true)]
    topic: String,
    /// The consumers' fetch.wait.max.ms (a Tansu broker holds every fetch
    /// this long).
    #[arg(long, default_value_t = 10, global = true)]
    fetch_wait_ms: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce the backlog.
    Load {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 100_000)]
        contacts: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The backlog's events are spread over this many days, ending now.
        #[arg(long, default_value_t = 30.0)]
        days: f64,
    },
    /// Print the end offset of every partition.
    Ends,
    /// Read and decode the whole topic; nothing else.
    Ceiling {
        #[arg(long, default_value = "bench-ceiling")]
        group: String,
    },
    /// Wait until the group's committed offsets reach the end of every
    /// partition of the topic (the ends as of the start of the wait).
    Drained {
        /// The consumer group whose committed offsets are read.
        #[arg(long)]
        group: String,
        /// Give up (exit code 1) after this many seconds.
        #[arg(long, default_value_t = 900.0)]
        timeout: f64,
        /// How often to ask the broker, in milliseconds.
        #[arg(long, default_value_t = 20)]
        poll_ms: u64,
    },
    /// Check the scores a system left in Redis against the oracle.
    HotPath {
        #[arg(long)]
        rules: String,
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 20_000)]
        contacts: usize,
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
    Verify {
        #[arg(long)]
        rules: String,
        #[arg(long)]
        redis: String,
        /// Key pattern of the system's contact hashes; the contact id follows
        /// the last `:c:`.
        #[arg(long)]
        pattern: String,
    },
    /// Open-loop load at `rate` events/s for `seconds`, measuring
    /// event-to-alert latency on the alert topic.
    Latency {
        #[arg(long, default_value = "sales-alerts")]
        alerts_topic: String,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100_000)]
        contacts: usize,
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// Every Nth event starts a fresh contact that crosses into a tier two
        /// events later.
        #[arg(long, default_value_t = 20)]
        crossing_every: u64,
        /// How long to wait for the last alerts after the load stops.
        #[arg(long, default_value_t = 10.0)]
        drain_seconds: f64,
        /// A label that keeps this run's fresh contacts apart from others'.
        #[arg(long, default_value = "lat")]
        label: String,
        /// Measure the broker alone: listen on the input topic and time each
        /// event from its event time to its arrival (one hop, no scorer).
        #[arg(long)]
        echo: bool,
        /// Measure the broker alone over two hops, as an alert travels: a
        /// pass-through consumes the input topic and produces to this topic
        /// the events that stand for alerts, those of the fresh contacts that
        /// cross a tier (every `crossing-every`th event), so that the second
        /// hop carries about a scorer's alert volume; each is timed from its
        /// event time to its arrival (input -> pass-through -> this topic ->
        /// consumer; no scorer).
        #[arg(long, conflicts_with = "echo")]
        relay: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Load { events, contacts, seed, days } => load(&cli.brokers, &cli.topic, events, contacts, seed, days)?,
        Command::Ends => {
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &cli.brokers).create()?;
            serde_json::to_string(&high_watermarks(&c, &cli.topic)?)?
        }
        Command::Ceiling { group } => ceiling(&cli.brokers, &cli.topic, &group, cli.fetch_wait_ms)?,
        Command::Drained { group, timeout, poll_ms } => drained(&cli.brokers, &cli.topic, &group, timeout, poll_ms)?,
        Command::HotPath { rules, events, contacts, batch } => hot_path(&rules, events, contacts, batch)?,
        Command::Verify { rules, redis, pattern } => {
            verify(&cli.brokers, &cli.topic, &rules, &redis, &pattern, cli.fetch_wait_ms)?
        }
        Command::Latency {
            alerts_topic,
            rate,
            seconds,
            contacts,
            seed,
            crossing_every,
            drain_seconds,
            label,
            echo,
            relay,
        } => {
            let listen = match (&relay, echo) {
                (Some(out), _) => out.clone(),
                (None, true) => cli.topic.clone(),
                (None, false) => alerts_topic,
            };
            let echo = echo || relay.is_some();
            let run = OpenLoop { rate, seconds, contacts, seed, crossing_every, drain_seconds, echo };
            latency(&cli.brokers, &cli.topic, &listen, &run, &label, relay.is_some(), cli.fetch_wait_ms)?
        }
    };
    println!("{out}");
    Ok(())
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        .create()?)
}

/// Sends `payload` keyed by `key`, waiting while the producer's queue is full.
fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, payload: &[u8]) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((e, r)) => {
                if !matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                    eprintln!("hotlead-bench: send failed: {e}");
                    return;
                }
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn load(brokers: &str, topic: &str, events: u64, contacts: usize, seed: u64, days: f64) -> anyhow::Result<String> {
    let p = producer(brokers)?;
    let mut sim = Simulator::new(&SimConfig { contacts, seed, ..SimConfig::default() });
    let end = hotlead::decode::now_ms() - 60_000;
    let span = (days * 86_400_000.0) as i64;
    let started = Instant::now();
    for i in 0..events {
        let at = end - span + (span as i128 * i as i128 / events.max(1) as i128) as i64;
        let e = sim.next_event(at);
        send(&p, topic, &e.contact_id, &e.encode_to_vec());
        if i > 0 && i % 200_000 == 0 {
            eprintln!("hotlead-bench: loaded {i} of {events} events ...");
        }
    }
    p.flush(Duration::from_secs(120))?;
    Ok(json!({"events": events, "contacts": contacts, "seconds": started.elapsed().as_secs_f64()}).to_string())
}

/// The end offset of every partition of `topic`.
fn high_watermarks(c: &BaseConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = md.topics().iter().find(|t| t.name() == topic).context("no such topic")?;
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        out.insert(p.id(), high);
    }
    Ok(out)
}

/// Reads every partition of `topic` from the start up to its current end,
/// handing each message to `f`.
fn read_topic(
    brokers: &str,
    topic: &str,
    group: &str,
    fetch_wait_ms: u32,
    mut f: impl FnMut(i32, i64, &[u8], &[u8]),
) -> anyhow::Result<u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let ends = high_watermarks(&c, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut left: usize = ends.values().filter(|h| **h > 0).count();
    let mut n = 0;
    let mut idle = Instant::now();
    while left > 0 {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                n += 1;
                f(m.partition(), m.offset(), m.key().unwrap_or_default(), m.payload().unwrap_or_default());
                if m.offset() + 1 == ends[&m.partition()] {
                    left -= 1;
                }
            }
            Some(Err(e)) => eprintln!("hotlead-bench: consumer error: {e}"),
            None if idle.elapsed() > Duration::from_secs(60) => {
                bail!("no message for 60 s with {left} partitions unread")
            }
            None => {}
        }
    }
    Ok(n)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn ceiling(brokers: &str, topic: &str, group: &str, fetch_wait_ms: u32) -> anyhow::Result<String> {
    let limits = hotlead::decode::Limits { max_future_skew_ms: i64::MAX / 2, ..Default::default() };
    let now = hotlead::decode::now_ms();
    let (cpu0, started) = (cpu_seconds(), Instant::now());
    let mut valid = 0u64;
    let n = read_topic(brokers, topic, group, fetch_wait_ms, |_, _, _, payload| {
        if hotlead::decode::decode(Some(payload), &limits, now).is_ok() {
            valid += 1;
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({"events": n, "valid": valid, "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu0}).to_string())
}

fn drained(brokers: &str, topic: &str, group: &str, timeout: f64, poll_ms: u64) -> anyhow::Result<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let ends = high_watermarks(&c, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition(topic, *p);
    }
    let started = Instant::now();
    loop {
        let committed: BTreeMap<i32, i64> = c
            .committed_offsets(tpl.clone(), Duration::from_secs(10))?
            .elements()
            .iter()
            .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { 0 }))
            .collect();
        if ends.iter().all(|(p, high)| committed.get(p).copied().unwrap_or(0) >= *high) {
            return Ok(json!({"seconds": started.elapsed().as_secs_f64(), "committed": committed}).to_string());
        }
        if started.elapsed().as_secs_f64() > timeout {
            bail!("group {group} has not committed the end of {topic} after {timeout} s: {committed:?} of {ends:?}");
        }
        std::thread::sleep(Duration::from_millis(poll_ms));
    }
}

fn verify(
    brokers: &str,
    topic: &str,
    rules_path: &str,
    redis_url: &str,
    pattern: &str,
    fetch_wait_ms: u32,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(rules_path).with_context(|| format!("reading {rules_path}"))?;
    let rules = RuleSet::parse(&text, rules_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut by_partition: BTreeMap<i32, Vec<Scored>> = BTreeMap::new();
    let limits = hotlead::decode::Limits { max_future_skew_ms: i64::MAX / 2, ..Default::default() };
    let now = hotlead::decode::now_ms();
    read_topic(brokers, topic, "bench-verify", fetch_wait_ms, |p, offset, key, payload| {
        by_partition.entry(p).or_default().push(Scored::decode(offset, Some(key), Some(payload), &limits, now));
    })?;
    // The oracle: each model's (score, time) per contact.
    let mut want: HashMap<(String, String), (f64, Millis)> = HashMap::new();
    let events: usize = by_partition.values().map(Vec::len).sum();
    for (p, msgs) in by_partition {
        let effects = score_partition(&rules, Source { topic, partition: p }, msgs);
        for (contact, known) in effects.contacts {
            for (m, st) in rules.models.iter().zip(&known.state.models) {
                if let Some(st) = st {
                    want.insert((contact.clone(), m.name.clone()), (st.score, st.at_ms));
                }
            }
        }
    }
    // What the system stored.
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_connection()?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(5000).query(&mut con)?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut got: HashMap<(String, String), (f64, Millis)> = HashMap::new();
    for chunk in keys.chunks(2000) {
        // hotlead keeps a partition's contacts in one hash (`...:states`,
        // contact id -> binary state); the peers a hash of text fields per
        // contact.
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("HGETALL").arg(k);
        }
        let hashes: Vec<HashMap<String, Vec<u8>>> = pipe.query(&mut con)?;
        let mut states: Vec<(String, hotlead::score::ContactState)> = Vec::new();
        for (k, h) in chunk.iter().zip(hashes) {
            if k.ends_with(":states") {
                for (contact, bytes) in h {
                    let (_, state) =
                        hotlead::store::codec::decode(&rules, &bytes, None).map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
                    states.push((contact, state));
                }
                continue;
            }
            // A peer's hash: only score and time are compared.
            let contact = k.rsplit_once(":c:").map_or(k.as_str(), |(_, c)| c).to_string();
            let text = |f: &str| h.get(f).and_then(|b| std::str::from_utf8(b).ok());
            for m in &rules.models {
                let s = text(&format!("{}:s", m.name)).and_then(|v| v.parse::<f64>().ok());
                let t = text(&format!("{}:t", m.name)).and_then(|v| v.parse::<Millis>().ok());
                if let (Some(s), Some(t)) = (s, t) {
                    got.insert((contact.clone(), m.name.clone()), (s, t));
                }
            }
        }
        for (contact, state) in states {
            for (m, st) in rules.models.iter().zip(&state.models) {
                if let Some(st) = st {
                    got.insert((contact.clone(), m.name.clone()), (st.score, st.at_ms));
                }
            }
        }
    }
    // Compare every score decayed to one instant.
    let at = want.values().chain(got.values()).map(|(_, t)| *t).max().unwrap_or(0);
    let half_life: HashMap<&str, f64> = rules.models.iter().map(|m| (m.name.as_str(), m.half_life_secs)).collect();
    let value = |model: &str, (s, t): (f64, Millis)| s * hotlead::score::decay_factor(at - t, half_life[model]);
    let mut mismatched = Vec::new();
    let mut max_rel: f64 = 0.0;
    let mut checked = 0;
    for ((contact, model), w) in &want {
        let w = value(model, *w);
        let g = got.get(&(contact.clone(), model.clone())).map_or(0.0, |g| value(model, *g));
        let rel = (g - w).abs() / w.abs().max(1e-9);
        if w.abs() < 1e-12 && g.abs() < 1e-12 {
            continue;
        }
        checked += 1;
        max_rel = max_rel.max(rel);
        if rel > 1e-9 {
            mismatched.push(format!("{contact}/{model}: {g} vs {w}"));
        }
    }
    let extra = got.keys().filter(|k| !want.contains_key(*k)).filter(|k| value(&k.1, got[*k]).abs() > 1e-12).count();
    Ok(json!({
        "events": events,
        "contacts_checked": checked,
        "mismatched": mismatched.len(),
        "unexpected": extra,
        "max_relative_error": max_rel,
        "examples": mismatched.iter().take(5).collect::<Vec<_>>(),
        "ok": mismatched.is_empty() && extra == 0 && checked > 0,
    })
    .to_string())
}

/// An open-loop run's parameters.
#[derive(Clone, Copy)]
struct OpenLoop {
    rate: f64,
    seconds: f64,
    contacts: usize,
    seed: u64,
    crossing_every: u64,
    drain_seconds: f64,
    echo: bool,
}

/// Event time (ms) of an alert that an event caused, or of an event itself
/// when `echo`.
fn stamped(payload: &[u8], echo: bool) -> Option<Millis> {
    let t = if echo {
        InteractionEvent::decode(payload).ok()?.occurred_at?
    } else {
        let a = ScoreAlert::decode(payload).ok()?;
        if a.trigger_event_id.is_empty() {
            return None;
        }
        a.crossed_at?
    };
    Some(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// The broker alone, second hop: consumes `topic` from its current end and
/// produces each message keyed `{label}-…` (the run's fresh contacts, which
/// stand for the alerts), key and payload unchanged, to `out` until `stop`.
/// Returns how many it passed on.
fn pass_through(
    brokers: &str,
    topic: &str,
    out: &str,
    label: &str,
    fetch_wait_ms: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<u64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-relay-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, high) in high_watermarks(&c, topic)? {
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    c.assign(&tpl)?;
    // As hotlead's alert producer: idempotent, linger.ms 5.
    let p = producer(brokers)?;
    let out = out.to_string();
    let fresh = format!("{label}-");
    Ok(std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let key = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or_default();
                if key.starts_with(&fresh) {
                    send(&p, &out, key, m.payload().unwrap_or_default());
                    n += 1;
                }
            }
        }
        let _ = p.flush(Duration::from_secs(10));
        n
    }))
}

fn latency(
    brokers: &str,
    topic: &str,
    alerts_topic: &str,
    run: &OpenLoop,
    label: &str,
    relay: bool,
    fetch_wait_ms: u32,
) -> anyhow::Result<String> {
    let OpenLoop { rate, seconds, contacts, seed, crossing_every, drain_seconds, echo } = *run;
    if rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let relay_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = if relay {
        Some(pass_through(brokers, topic, alerts_topic, label, fetch_wait_ms, relay_stop.clone())?)
    } else {
        None
    };
    // Listen on the alert topic from its current end.
    let alerts: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-latency-{label}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let ends = high_watermarks(&alerts, alerts_topic)?;
    let mut tpl = TopicPartitionList::new();
    for (p, high) in &ends {
        tpl.add_partition_offset(alerts_topic, *p, Offset::Offset(*high))?;
    }
    alerts.assign(&tpl)?;
    let started_ms = hotlead::decode::now_ms();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples: Vec<f64> = Vec::new();
            let mut quiet_since: Option<Instant> = None;
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed().as_secs_f64() > drain_seconds {
                        break;
                    }
                }
                let Some(Ok(m)) = alerts.poll(Duration::from_millis(50)) else { continue };
                let now = hotlead::decode::now_ms();
                let Some(crossed) = stamped(m.payload().unwrap_or_default(), echo) else { continue };
                // The first second warms the clients up and is not counted.
                if crossed >= started_ms + 1000 {
                    samples.push((now - crossed) as f64);
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        quiet_since = Some(Instant::now());
                    }
                }
            }
            samples
        })
    };
    // Open loop: event i is due at start + i / rate, whatever came before.
    let p = producer(brokers)?;
    let mut sim = Simulator::new(&SimConfig { contacts, seed, ..SimConfig::default() });
    let total = (rate * seconds) as u64;
    let start = Instant::now();
    let mut fresh: Vec<(String, u8)> = Vec::new();
    let mut fresh_n = 0u64;
    let mut behind_max = 0.0f64;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            behind_max = behind_max.max((now - due).as_secs_f64());
        }
        let at = hotlead::decode::now_ms();
        let e = if crossing_every > 0 && i % crossing_every == 0 {
            // A fresh contact: a form (25) then a webinar (20) crosses warm (30).
            match fresh.pop() {
                Some((id, _)) => crossing_event(
                    &id,
                    at,
                    Interaction::WebinarAttendance(WebinarAttendance {
                        webinar_id: "bench".into(),
                        attended: true,
                        minutes_attended: 45,
                    }),
                ),
                None => {
                    fresh_n += 1;
                    let id = format!("{label}-{fresh_n}");
                    fresh.push((id.clone(), 1));
                    crossing_event(
                        &id,
                        at,
                        Interaction::FormSubmission(FormSubmission {
                            form_id: "demo-request".into(),
                            ..Default::default()
                        }),
                    )
                }
            }
        } else {
            sim.next_event(at)
        };
        send(&p, topic, &e.contact_id, &e.encode_to_vec());
    }
    let sent_seconds = start.elapsed().as_secs_f64();
    p.flush(Duration::from_secs(30))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut samples = listener.join().map_err(|_| anyhow::anyhow!("listener panicked"))?;
    relay_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let relayed = match relay {
        Some(r) => Some(r.join().map_err(|_| anyhow::anyhow!("pass-through panicked"))?),
        None => None,
    };
    samples.sort_by(f64::total_cmp);
    let q = |f: f64| -> Option<f64> {
        (!samples.is_empty()).then(|| samples[((samples.len() as f64 * f).ceil() as usize).clamp(1, samples.len()) - 1])
    };
    Ok(json!({
        "rate": rate,
        "events": total,
        "achieved_rate": total as f64 / sent_seconds,
        "max_behind_seconds": behind_max,
        "alerts": samples.len(),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": samples.last(),
        "relayed": relayed,
    })
    .to_string())
}

fn crossing_event(contact: &str, at: Millis, interaction: Interaction) -> InteractionEvent {
    InteractionEvent {
        event_id: format!("{contact}-{at}-{}", rand_suffix()),
        contact_id: contact.to_string(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(interaction),
        ..Default::default()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The hot path of one partition worker, in-process: simulated events (as
/// payloads) go through decoding, the state cache (each contact kept as its
/// stored bytes and decoded when its batch takes it), scoring and the commit
/// plan, batch by batch. Reports allocations and bytes allocated per event,
/// and CPU time per event.
fn hot_path(rules_path: &str, events: u64, contacts: usize, batch: usize) -> anyhow::Result<String> {
    use hotlead::engine::{score_batch, Dedup, Raw};
    use hotlead::store::{commit_for, Outputs, Stored, Written};
    use std::sync::atomic::Ordering;
    let rules = RuleSet::load(std::path::Path::new(rules_path))?;
    let mut sim = Simulator::new(&SimConfig { contacts, seed: 7, ..SimConfig::default() });
    let now = hotlead::decode::now_ms();
    let raws: Vec<Raw> = (0..events)
        .map(|i| {
            let e = sim.next_event(now - 30 * 86_400_000 + i as i64 * 10);
            Raw::new(i as i64, Some(e.contact_id.as_bytes()), Some(&e.encode_to_vec()), now)
        })
        .collect();
    let limits = hotlead::decode::Limits::default();
    let source = Source { topic: "interactions", partition: 0 };
    let outputs = Outputs {
        alerts: "sales-alerts",
        shadow_alerts: "shadow-alerts",
        dead_letter: "dead",
        dead_letter_max_bytes: 512 * 1024,
        erasures: "erasures",
        contributions: "account-contributions",
        contribution_partitions: 8,
    };
    let mut cache: HashMap<String, Written> = HashMap::new();
    let cpu0 = cpu_seconds();
    COUNTING.store(true, Ordering::Relaxed);
    for chunk in raws.chunks(batch) {
        let messages: Vec<Scored> = chunk.iter().map(|r| r.decode(&limits)).collect();
        let mut known = HashMap::new();
        let mut written = HashMap::new();
        for m in &messages {
            let Ok(v) = &m.event else { continue };
            let id = &v.event.contact_id;
            if let Some(w) = cache.remove(id) {
                let s = Stored::from_written(&rules, w).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
                known.insert(id.clone(), s.contact);
                written.insert(id.clone(), s.written);
            }
        }
        let effects = score_batch(&rules, source, messages, known, Dedup::default());
        let (commit, after) = commit_for(&rules, source, outputs, &effects, written);
        std::hint::black_box(&commit);
        cache.extend(effects.contacts.into_iter().zip(after).map(|((id, _), w)| (id, w)));
    }
    COUNTING.store(false, Ordering::Relaxed);
    let cpu = cpu_seconds() - cpu0;
    let n = events as f64;
    Ok(json!({
        "events": events,
        "contacts": contacts,
        "batch": batch,
        "allocations_per_event": ALLOCATIONS.load(Ordering::Relaxed) as f64 / n,
        "allocated_bytes_per_event": ALLOCATED_BYTES.load(Ordering::Relaxed) as f64 / n,
        "cpu_us_per_event": cpu / n * 1e6,
    })
    .to_string())
}
