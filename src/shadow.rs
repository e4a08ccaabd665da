//! Shadow models: a model tried on real traffic, and on real history,
//! before sales hears from it; then promoted, and rolled back if need be.
//!
//! A shadow model is scored on every event like a live one; its crossings
//! go to the shadow alert topic (`ScoreAlert.shadow` set), never to sales.
//! It lives in one of two places:
//! - **In the live lane**: a model the live rules mark `shadow: true`,
//!   scored by the live service into the same contact states, from the
//!   moment it is added.
//! - **In a back-filled lane**: `hotlead backfill --rules NEW.yaml --model
//!   NAME` runs a second scoring pipeline, the lane `NAME`, over the input
//!   topic from its start (or from a time), then follows the live stream.
//!
//! Invariants:
//! - A lane is a whole pipeline with its own consumer group and its own
//!   Redis keys (`hl:lane:<name>:{topic:p}:...`) under the same claim,
//!   fence, watermark and outbox protocol as the live service: a back-fill
//!   killed anywhere resumes from its watermarks and counts no event twice,
//!   and it never writes a key of the live lane.
//! - A lane publishes only alerts: its shadow models' to the shadow alert
//!   topic (and, once promoted, its live models' to sales). Dead letters and
//!   erasure records are the live service's to publish. Records a lane
//!   forwards (an identified visitor's) carry its name and are applied by it
//!   alone.
//! - Promotion is a record (`ModelPromotion`) written to every partition of
//!   the input topic. Each lane switches roles when it reads it, in the same
//!   commit as the events around it: on each partition, every alert of an
//!   event before the record has the old roles and every one after it the
//!   new, whichever lane scores the model, across kills and rebalances.
//!   Every event is scored by both models throughout, so a promotion loses
//!   and doubles nothing, and the demoted model, still scored as a shadow,
//!   is a rollback away.
//! - The registry (`hl:lanes`, a hash: lane name -> JSON [`LaneInfo`])
//!   names each back-filled lane with the rules it scores, so the read API,
//!   `hotlead compare` and the board find its model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::Consumer as _;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::proto::interaction_event::Interaction;
use crate::proto::{InteractionEvent, ModelPromotion};
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};

/// The registry of back-filled lanes: a hash, lane name -> JSON [`LaneInfo`].
pub const REGISTRY: &str = "hl:lanes";

/// A back-filled lane, as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneInfo {
    /// The lane's name (its keys are under `hl:lane:<name>`).
    pub name: String,
    /// The model it was back-filled for.
    pub model: String,
    /// The rules it scores, as text.
    pub rules_yaml: String,
    /// The file they were read from.
    pub rules_path: String,
    /// Events dated before this were not scored (`--from`), ms since 1970.
    pub from_ms: Option<i64>,
    /// Its consumer group.
    pub group: String,
    /// When the back-fill first started, ms since 1970.
    pub started_ms: i64,
}

impl LaneInfo {
    /// The lane's rules.
    pub fn rules(&self) -> Result<RuleSet, crate::rules::RulesError> {
        RuleSet::parse(&self.rules_yaml, &self.rules_path)
    }
}

/// Every registered lane, by name.
pub async fn lanes(store: &Store) -> Result<Vec<LaneInfo>, StoreError> {
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(REGISTRY).query_async(&mut store.connection()).await?;
    let mut lanes: Vec<LaneInfo> = all.iter().filter_map(|(_, v)| serde_json::from_str(v).ok()).collect();
    lanes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(lanes)
}

/// Registers a lane (or records it again, unchanged).
pub async fn register(store: &Store, info: &LaneInfo) -> Result<(), StoreError> {
    let json = serde_json::to_string(info).expect("a lane serializes");
    redis::cmd("HSET").arg(REGISTRY).arg(&info.name).arg(json).query_async::<i64>(&mut store.connection()).await?;
    Ok(())
}

/// Where a model is scored: its lane's store handle and rules.
#[derive(Clone)]
pub struct Located {
    /// The lane (`""`: the live service).
    pub lane: String,
    /// The store, reading that lane's keys.
    pub store: Store,
    /// The rules the lane scores.
    pub rules: Arc<RuleSet>,
    /// The model's index in them.
    pub model: usize,
}

/// Finds a model: in the live rules first, then in the registered lanes.
pub async fn locate(store: &Store, live: &Arc<RuleSet>, model: &str) -> Result<Option<Located>, StoreError> {
    if let Some(i) = live.models.iter().position(|m| m.name == model) {
        return Ok(Some(Located { lane: String::new(), store: store.for_lane(""), rules: live.clone(), model: i }));
    }
    for lane in lanes(store).await? {
        let Ok(rules) = lane.rules() else { continue };
        if let Some(i) = rules.models.iter().position(|m| m.name == model) {
            return Ok(Some(Located {
                store: store.for_lane(&lane.name),
                lane: lane.name,
                rules: Arc::new(rules),
                model: i,
            }));
        }
    }
    Ok(None)
}

/// Every model a deployment scores, live lane first: (model, lane).
pub async fn all_models(store: &Store, live: &RuleSet) -> Result<Vec<(String, String)>, StoreError> {
    let mut all: Vec<(String, String)> = live.models.iter().map(|m| (m.name.clone(), String::new())).collect();
    for lane in lanes(store).await? {
        if let Ok(rules) = lane.rules() {
            all.extend(rules.models.iter().map(|m| (m.name.clone(), lane.name.clone())));
        }
    }
    Ok(all)
}

/// A model scored here, as the read side lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// The model.
    pub name: String,
    /// Its back-filled lane (`null`: the live service).
    pub lane: Option<String>,
    /// A shadow on the input's first partition (roles switch per partition,
    /// at a promotion's offset; they agree once every lane has read it).
    pub shadow: bool,
    /// Its tiers' names, base tier first.
    pub tiers: Vec<String>,
}

/// Every model scored here, live lane first, with its role now.
pub async fn scored(store: &Store, live: &Arc<RuleSet>, topic: &str) -> Result<Vec<Scored>, StoreError> {
    let mut sets = vec![(String::new(), live.clone())];
    for lane in lanes(store).await? {
        if let Ok(rules) = lane.rules() {
            sets.push((lane.name, Arc::new(rules)));
        }
    }
    let mut out = Vec::new();
    for (lane, rules) in sets {
        let roles = lane_on(&store.for_lane(&lane), &lane, &rules, topic, 0).await?;
        for (m, shadow) in rules.models.iter().zip(roles.shadow) {
            let tiers = std::iter::once(m.base_tier.clone()).chain(m.tiers.iter().map(|t| t.name.clone())).collect();
            let lane = (!lane.is_empty()).then(|| lane.clone());
            out.push(Scored { name: m.name.clone(), lane, shadow, tiers });
        }
    }
    Ok(out)
}

/// The roles stored for a partition of a lane after a promotion
/// (`model=live,other=shadow`), if any.
pub async fn stored_roles(store: &Store, topic: &str, partition: i32) -> Result<Option<String>, StoreError> {
    Ok(store.strings(&[store.keys(topic, partition).roles()]).await?.pop().flatten())
}

/// Whether `model` is a shadow on a partition, as its lane's rules and
/// stored roles say.
pub async fn is_shadow(located: &Located, topic: &str, partition: i32) -> Result<bool, StoreError> {
    let lane = lane_on(&located.store, &located.lane, &located.rules, topic, partition).await?;
    Ok(lane.shadow[located.model])
}

/// A lane with the roles stored for a partition over its defaults.
async fn lane_on(
    store: &Store,
    lane: &str,
    rules: &RuleSet,
    topic: &str,
    partition: i32,
) -> Result<crate::engine::Lane, StoreError> {
    let base = crate::engine::Lane::named(lane, rules);
    Ok(match stored_roles(store, topic, partition).await? {
        Some(r) => base.with_roles(rules, &r),
        None => base,
    })
}

/// Completes a contact's view with the roles on its partition (which of
/// the live rules' models are shadows there) and the models of every
/// back-filled lane that scores it, each marked with its lane.
pub async fn add_shadows(
    store: &Store,
    live: &RuleSet,
    topic: &str,
    mut view: crate::query::ContactView,
    now_ms: i64,
) -> Result<crate::query::ContactView, StoreError> {
    let p = view.partition;
    let roles = lane_on(&store.for_lane(""), "", live, topic, p).await?;
    for m in &mut view.models {
        if let Some(i) = live.models.iter().position(|x| x.name == m.model) {
            m.shadow = roles.shadow[i];
        }
    }
    for info in lanes(store).await? {
        let Ok(rules) = info.rules() else { continue };
        let lane_store = store.for_lane(&info.name);
        let values = lane_store.load_contacts(&lane_store.keys(topic, p), &rules, &[view.contact_id.as_str()]).await?;
        let Some(Ok((_, state))) = values.first().map(|v| crate::store::decode_stored(&rules, v)) else { continue };
        let roles = lane_on(&lane_store, &info.name, &rules, topic, p).await?;
        for mut m in crate::query::model_views(&rules, &state, now_ms) {
            let i = rules.models.iter().position(|x| x.name == m.model).unwrap_or(0);
            m.shadow = roles.shadow[i];
            m.lane = Some(info.name.clone());
            view.models.push(m);
        }
    }
    Ok(view)
}

/// The promotion record: `model` live from here on, `replaces` a shadow.
pub fn promotion_event(model: &str, replaces: &str, announce: bool, by: &str, now_ms: i64) -> InteractionEvent {
    InteractionEvent {
        event_id: crate::kafka::request_id("promote", now_ms),
        occurred_at: Some(crate::decode::timestamp(now_ms)),
        interaction: Some(Interaction::Promotion(ModelPromotion {
            model: model.to_string(),
            replaces: replaces.to_string(),
            announce,
            requested_by: by.to_string(),
        })),
        ..Default::default()
    }
}

/// Writes a promotion record to every partition of `topic` (no key), and
/// waits for each acknowledgement: (partition, offset) of each.
pub async fn send_promotion(
    client: &rdkafka::ClientConfig,
    topic: &str,
    event: &InteractionEvent,
) -> anyhow::Result<Vec<(i32, i64)>> {
    use prost::Message as _;
    let partitions = crate::kafka::partition_count(client, topic)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let producer = crate::kafka::event_producer(client)?;
    let payload = event.encode_to_vec();
    let mut at = Vec::new();
    for p in 0..partitions {
        let record = rdkafka::producer::FutureRecord::<(), _>::to(topic).partition(p).payload(&payload);
        let d = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("cannot write the promotion to partition {p} of {topic}"))?;
        at.push((d.partition, d.offset));
    }
    Ok(at)
}

/// `hotlead promote`: checks the models, then writes the record.
pub async fn promote(config: &Config, args: PromoteArgs) -> anyhow::Result<()> {
    let store = Store::connect_with(&config.redis).await.context("cannot connect to Redis (redis.url)")?;
    let live = Arc::new(crate::cli::load_rules_file(&config.rules.path)?);
    let known = all_models(&store, &live).await?;
    let name = |m: &str| known.iter().any(|(k, _)| k == m);
    let names = || known.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join(", ");
    anyhow::ensure!(name(&args.model), "no model `{}` is scored here; models: {}", args.model, names());
    let replaces = args.replaces.unwrap_or_default();
    anyhow::ensure!(
        replaces.is_empty() || name(&replaces),
        "no model `{replaces}` is scored here (--replaces); models: {}",
        names()
    );
    anyhow::ensure!(replaces != args.model, "a model cannot replace itself");
    let event = promotion_event(&args.model, &replaces, args.announce, &args.by, crate::decode::now_ms());
    let client = config.client_config();
    let at = send_promotion(&client, &config.topics.input, &event).await?;
    let offsets: Vec<String> = at.iter().map(|(p, o)| format!("{p}@{o}")).collect();
    println!(
        "Promotion {} written to {} partitions of {} ({}): `{}` goes live{} on each partition at that offset{}.",
        event.event_id,
        at.len(),
        config.topics.input,
        offsets.join(" "),
        args.model,
        if replaces.is_empty() { String::new() } else { format!(", `{replaces}` becomes a shadow") },
        if args.announce { ", announcing the contacts it holds above its base tier" } else { "" },
    );
    Ok(())
}

/// `hotlead promote`.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The shadow model that becomes live.
    pub model: String,
    /// The live model it replaces: it becomes a shadow (promote it back to
    /// roll back).
    #[arg(long)]
    pub replaces: Option<String>,
    /// Also send sales one alert per contact the model holds above its base
    /// tier (without it, the switch itself raises no alert).
    #[arg(long)]
    pub announce: bool,
    /// Who asks (kept on the record).
    #[arg(long, default_value = "")]
    pub by: String,
}

/// A back-fill's rate limit unless told otherwise, events a second.
pub const DEFAULT_MAX_RATE: u32 = 3_000;

/// `hotlead backfill`.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The rules file holding the model to back-fill (every model in it is
    /// scored, as shadows: a tier may require another model's score).
    #[arg(long)]
    pub rules: std::path::PathBuf,
    /// The model to back-fill; the lane is named after it.
    #[arg(long)]
    pub model: String,
    /// Score only events dated from this time (RFC 3339); default: the
    /// whole retained history.
    #[arg(long)]
    pub from: Option<String>,
    /// Stop once caught up with the live stream instead of following it.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Score at most this many events a second, so the live service keeps
    /// its share of the machine (the benchmark's back-fill phase measures
    /// what the default costs it); 0: as fast as it can.
    #[arg(long, default_value_t = DEFAULT_MAX_RATE)]
    pub max_rate: u32,
}

/// `hotlead backfill`: registers the lane, then runs its pipeline with a
/// progress bar until interrupted (or caught up, with `--until-caught-up`).
pub async fn backfill(mut config: Config, args: BackfillArgs) -> anyhow::Result<()> {
    let rules_yaml = std::fs::read_to_string(&args.rules)
        .with_context(|| format!("cannot read the rules file {}", args.rules.display()))?;
    let rules = RuleSet::parse(&rules_yaml, &args.rules.display().to_string()).map_err(crate::cli::rules_hint)?;
    if !rules.models.iter().any(|m| m.name == args.model) {
        let names: Vec<&str> = rules.models.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!("{} has no model `{}`; its models: {}", args.rules.display(), args.model, names.join(", "));
    }
    let live = crate::cli::load_rules_file(&config.rules.path)?;
    anyhow::ensure!(
        !live.models.iter().any(|m| rules.models.iter().any(|n| n.name == m.name)),
        "{} names models the live rules ({}) score already; give the new models their own names (say `{}-v2`)",
        args.rules.display(),
        config.rules.path.display(),
        args.model
    );
    let from_ms = match &args.from {
        None => None,
        Some(t) => {
            let t =
                humantime::parse_rfc3339_weak(t).with_context(|| format!("--from `{t}` is not an RFC 3339 time"))?;
            Some(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
        }
    };
    let store = Store::connect_with(&config.redis).await.context("cannot connect to Redis (redis.url)")?;
    let lane = args.model.clone();
    let group = format!("{}.lane.{lane}", config.group_id());
    let info = LaneInfo {
        name: lane.clone(),
        model: args.model.clone(),
        rules_yaml,
        rules_path: args.rules.display().to_string(),
        from_ms,
        group: group.clone(),
        started_ms: crate::decode::now_ms(),
    };
    match lanes(&store).await?.into_iter().find(|l| l.name == lane) {
        Some(old) => {
            anyhow::ensure!(
                old.rules_yaml == info.rules_yaml && old.from_ms == info.from_ms,
                "the lane `{lane}` was back-filled with other rules or another --from; resuming would mix them. Name the new model differently (say `{lane}-2`)"
            );
            eprintln!("Resuming the back-fill of `{lane}` from its watermarks.");
        }
        None => register(&store, &info).await?,
    }
    config.pipeline.lane = lane.clone();
    config.pipeline.not_before_ms = from_ms;
    config.pipeline.max_events_per_second = args.max_rate;
    config.rules.path = args.rules.clone();
    config.kafka.insert("group.id".into(), group);
    let client = config.client_config();
    let topic = config.topics.input.clone();
    let lane_store = store.for_lane(&lane);
    let (caught_tx, caught_rx) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(report_progress(client, topic, lane_store, lane.clone(), caught_tx));
    let until = args.until_caught_up;
    let shutdown = async move {
        if until {
            tokio::select! {
                _ = caught_rx => {}
                () = crate::shutdown_signal() => {}
            }
        } else {
            crate::shutdown_signal().await;
        }
    };
    // No listener: the live service serves the lane's model.
    config.http.listen = String::new();
    let result = crate::service::Service::new(config)?.run(shutdown).await;
    progress.abort();
    result
}

/// How far a lane has come: offsets applied and offsets in the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Messages of the topic the lane has applied (up to its watermarks).
    pub done: i64,
    /// Messages in the topic (retained).
    pub total: i64,
}

/// Reads a lane's position on `topic`.
pub async fn position(
    consumer: &rdkafka::consumer::BaseConsumer<crate::kafka::QuietContext>,
    topic: &str,
    store: &Store,
) -> anyhow::Result<Position> {
    let partitions = crate::kafka::partition_count_with(consumer, topic, Duration::from_secs(10))?;
    let mut pos = Position { done: 0, total: 0 };
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let wm = store.watermark(&store.keys(topic, p)).await?;
        pos.total += high - low;
        pos.done += wm.map_or(0, |w| (w + 1 - low).clamp(0, high - low));
    }
    Ok(pos)
}

/// One line of progress: a bar, counts, rate and time left.
pub fn progress_line(lane: &str, pos: Position, rate: f64) -> String {
    const WIDTH: usize = 30;
    let share = if pos.total == 0 { 1.0 } else { pos.done as f64 / pos.total as f64 };
    let filled = ((share * WIDTH as f64).round() as usize).min(WIDTH);
    let left = (pos.total - pos.done).max(0);
    let eta = if left == 0 {
        "caught up".to_string()
    } else if rate > 0.0 {
        format!("ETA {}", humantime::format_duration(Duration::from_secs((left as f64 / rate).ceil() as u64)))
    } else {
        "ETA -".to_string()
    };
    format!(
        "backfill {lane} [{}{}] {:5.1}%  {}/{} events  {:.0} ev/s  {eta}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        share * 100.0,
        pos.done,
        pos.total,
        rate
    )
}

/// Prints the lane's progress on stderr (redrawn in place on a terminal, a
/// line every 5 s otherwise), and says once when it has caught up.
async fn report_progress(
    client: rdkafka::ClientConfig,
    topic: String,
    store: Store,
    lane: String,
    caught_up: tokio::sync::oneshot::Sender<()>,
) {
    use std::io::{IsTerminal as _, Write as _};
    let tty = std::io::stderr().is_terminal();
    let Ok(consumer) = client.create_with_context::<_, rdkafka::consumer::BaseConsumer<_>>(crate::kafka::QuietContext)
    else {
        return;
    };
    let consumer = Arc::new(consumer);
    let mut caught_up = Some(caught_up);
    let mut first: Option<(Instant, i64)> = None;
    let mut printed = Instant::now() - Duration::from_secs(60);
    loop {
        let c = consumer.clone();
        let (t, s) = (topic.clone(), store.clone());
        let pos = match tokio::spawn(async move { position(&c, &t, &s).await }).await {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (t0, d0) = *first.get_or_insert((Instant::now(), pos.done));
        let secs = t0.elapsed().as_secs_f64();
        let rate = if secs > 0.5 { (pos.done - d0) as f64 / secs } else { 0.0 };
        let line = progress_line(&lane, pos, rate);
        if tty {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else if printed.elapsed() >= Duration::from_secs(if caught_up.is_some() { 5 } else { 60 }) {
            eprintln!("{line}");
            printed = Instant::now();
        }
        if pos.done >= pos.total {
            if let Some(tx) = caught_up.take() {
                if tty {
                    eprintln!();
                }
                eprintln!(
                    "backfill {lane}: caught up with the live stream ({} events); following it (Ctrl-C stops; run again to resume).",
                    pos.total
                );
                let _ = tx.send(());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_share_rate_and_time_left() {
        let line = progress_line("m2", Position { done: 250, total: 1000 }, 50.0);
        assert!(line.contains("[########----------------------]"), "{line}");
        assert!(line.contains(" 25.0%  250/1000 events  50 ev/s  ETA 15s"), "{line}");
        assert!(progress_line("m2", Position { done: 1000, total: 1000 }, 0.0).ends_with("caught up"));
        assert!(progress_line("m2", Position { done: 0, total: 10 }, 0.0).ends_with("ETA -"));
    }

    #[test]
    fn a_promotion_carries_no_contact_and_is_accepted_by_the_decoder() {
        use prost::Message as _;
        let e = promotion_event("m2", "m1", false, "ops", 1_760_000_000_000);
        assert!(e.contact_id.is_empty());
        let v = crate::decode::decode(Some(&e.encode_to_vec()), &Default::default(), 1_760_000_000_000).unwrap();
        assert!(
            matches!(v.event.interaction, Some(Interaction::Promotion(ref p)) if p.model == "m2" && p.replaces == "m1")
        );
        let mut bad = e.clone();
        bad.contact_id = "c1".into();
        let err = crate::decode::decode(Some(&bad.encode_to_vec()), &Default::default(), 1_760_000_000_000);
        assert_eq!(err.unwrap_err().reason(), "invalid_promotion");
    }
}
