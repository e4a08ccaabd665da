//! The `hotlead` command line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Config;
use crate::rules::RuleSet;
use crate::simulate::{SimConfig, Simulator};

/// hotlead: real-time lead scoring from Kafka interaction events.
#[derive(Debug, Parser)]
#[command(name = "hotlead", version, about)]
pub struct Cli {
    /// Configuration file (TOML). `HOTLEAD_<SECTION>__<FIELD>` variables
    /// override it.
    #[arg(long, short, global = true, env = "HOTLEAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score events: consume, score, commit to Redis, publish alerts.
    Run(RunArgs),
    /// Work with rules files.
    Rules {
        /// What to do with rules.
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Produce a realistic, seeded stream of interaction events.
    Simulate(SimulateArgs),
    /// Print alerts from the alert topic as they arrive.
    Alerts(AlertsArgs),
    /// Create hotlead's topics (input, alerts, shadow alerts, dead letters, erasures, notify dead letters).
    Topics(TopicsArgs),
    /// Show a contact's scores, tiers and the breakdown by rule, decayed to now.
    Score(ScoreArgs),
    /// Show a model's leaderboard: the top contacts by current score.
    Top(TopArgs),
    /// Show an account's score, tier and breadth in each model with an
    /// account roll-up, and its contacts' shares, decayed to now.
    Account(AccountArgs),
    /// Show a contact's score history in a model: its events, the points
    /// each gave, and every change of tier, rebuilt from the input topic
    /// with the rules in force.
    History(HistoryArgs),
    /// Compare a shadow model with a live one over every contact: tier
    /// migrations, who would and would not alert, score quantiles, the
    /// largest changes.
    Compare(CompareArgs),
    /// Deliver alerts to webhooks, chat and email, as a routes file says.
    Notify(crate::notify::NotifyArgs),
    /// Erase a contact (GDPR Art. 17): its state, leaderboard and cooling
    /// entries, event ids and recent alerts go, an erasure record is
    /// published, and its later events are not scored.
    Erase(EraseArgs),
    /// Adjust a contact's score in one model by hand (a sales rep's call):
    /// produces an adjustment event that the scorer applies like any event.
    Adjust(AdjustArgs),
    /// Score a new model over the retained history of the input topic, as a
    /// shadow, in a lane of its own (resumable), then follow the live stream.
    Backfill(crate::shadow::BackfillArgs),
    /// Make a shadow model live (and the model it replaces a shadow), at one
    /// offset of every partition; promote the old one back to roll back.
    Promote(crate::shadow::PromoteArgs),
}

/// `hotlead erase`.
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The contact id to erase.
    pub contact: String,
    /// Who asks (kept in the erasure record).
    #[arg(long, default_value = "")]
    pub by: String,
    /// Why (kept in the erasure record), e.g. a ticket number.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Bootstrap servers; overrides the configuration's `bootstrap.servers`.
    #[arg(long)]
    pub brokers: Option<String>,
}

/// `hotlead adjust`.
#[derive(Debug, Args)]
pub struct AdjustArgs {
    /// The contact id.
    pub contact_id: String,
    /// The model whose score to adjust.
    #[arg(long)]
    pub model: String,
    /// Points to add (negative lowers the score); with `--reset`, the
    /// behaviour score the model starts again from (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub points: Option<f64>,
    /// Why, in words; the breakdown shows it as `adjustment:<reason>`.
    #[arg(long)]
    pub reason: String,
    /// Who made it (kept on the event).
    #[arg(long, default_value = "")]
    pub by: String,
    /// Set the model's behaviour score to zero first; the fit part stays.
    #[arg(long)]
    pub reset: bool,
    /// When: RFC 3339 time or milliseconds since 1970; default now.
    #[arg(long)]
    pub at: Option<String>,
    /// The event id; default a fresh one. Give the id of an earlier try to
    /// count it once.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Bootstrap servers; overrides the configuration's `bootstrap.servers`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Rules file (to check the model); overrides `rules.path` of the
    /// configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// `hotlead top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The model.
    pub model: String,
    /// How many contacts.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Only contacts scoring at least this now.
    #[arg(long)]
    pub min_score: Option<f64>,
    /// Rules file; overrides `rules.path` of the configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// `hotlead history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The contact id.
    pub contact_id: String,
    /// The model; default the first in the rules.
    #[arg(long)]
    pub model: Option<String>,
    /// Only entries from this time on: RFC 3339 or milliseconds since 1970.
    #[arg(long)]
    pub from: Option<String>,
    /// Only entries up to this time: RFC 3339 or milliseconds since 1970.
    #[arg(long)]
    pub to: Option<String>,
    /// At most so many entries, the latest.
    #[arg(long, default_value_t = crate::history::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON (the read API's answer) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rules file; overrides `rules.path` of the configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// `hotlead compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The live model (any model scored, live or in a back-filled lane).
    pub live: String,
    /// The shadow model to compare with it.
    pub shadow: String,
    /// How many contacts each list shows.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The moment compared: RFC 3339 time or milliseconds since 1970;
    /// default now.
    #[arg(long)]
    pub at: Option<String>,
    /// Rules file; overrides `rules.path` of the configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// `hotlead score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The contact id.
    pub contact_id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rules file; overrides `rules.path` of the configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// `hotlead account`.
#[derive(Debug, Args)]
pub struct AccountArgs {
    /// The account id.
    pub account_id: String,
    /// The moment: RFC 3339 time or milliseconds since 1970; default now.
    #[arg(long)]
    pub at: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rules file; overrides `rules.path` of the configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// `hotlead run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Rules file; overrides `rules.path` of the configuration.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Score again from the start of the topic any partition whose state is
    /// gone from Redis while Kafka has offsets committed for it (without it,
    /// hotlead stops with an error rather than score from zero).
    #[arg(long)]
    pub rebuild: bool,
}

/// `hotlead rules ...`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file: every mistake with its line and column, then
    /// lint warnings, then a summary of its models.
    Check {
        /// The rules file.
        file: PathBuf,
        /// Refuse the file when lint warns too.
        #[arg(long)]
        strict: bool,
    },
    /// Score events from a JSON lines file offline and print each contact's
    /// scores, tiers, breakdown and crossings.
    Test {
        /// The rules file.
        file: PathBuf,
        /// Events, one JSON object per line (see docs/rules.md).
        events: PathBuf,
    },
}

/// `hotlead simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Bootstrap servers; overrides the configuration's `bootstrap.servers`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic to produce to; defaults to the configured input topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Events per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Stop after this many events; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    pub total: u64,
    /// Number of contacts.
    #[arg(long, default_value_t = 2000)]
    pub contacts: usize,
    /// Zipf exponent of activity over contacts.
    #[arg(long, default_value_t = 1.05)]
    pub zipf: f64,
    /// Random seed; the same seed gives the same stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of contacts who first browse as anonymous visitors and then
    /// identify (an `identify` event), in [0, 1].
    #[arg(long, default_value_t = 0.2)]
    pub anonymous_share: f64,
    /// Contacts in accounts as buying groups (1 to 8 contacts, each with a
    /// `role` and `seniority` in its profile), several contacts of an
    /// account in market active together; `--buying-groups=false` gives the
    /// plain stream (four contacts an account, no roles).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub buying_groups: bool,
    /// Make every Nth event unscorable (to exercise the dead-letter topic); 0 never.
    #[arg(long, default_value_t = 0)]
    pub poison_every: u64,
    /// Write the events to this JSON lines file (for `hotlead rules test`)
    /// instead of producing them; needs `--total`. Events are a minute apart,
    /// ending now.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
}

/// `hotlead alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Bootstrap servers; overrides the configuration's `bootstrap.servers`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Alert topic; defaults to the configured one.
    #[arg(long)]
    pub topic: Option<String>,
    /// Print alerts already on the topic too.
    #[arg(long)]
    pub from_beginning: bool,
    /// The shadow models' alerts (`topics.shadow_alerts`) instead of sales'.
    #[arg(long, conflicts_with = "topic")]
    pub shadow: bool,
    /// Account alerts (`topics.account_alerts`) instead of contacts'.
    #[arg(long, conflicts_with_all = ["shadow"])]
    pub accounts: bool,
}

/// `hotlead topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// Bootstrap servers; overrides the configuration's `bootstrap.servers`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Partitions of the input topic (the unit of scale-out).
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Replication factor.
    #[arg(long, default_value_t = 1)]
    pub replication: i32,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    crate::telemetry::init_logging(cli.log_json);
    let load_config = || Config::load(cli.config.as_deref()).context("invalid configuration");
    match cli.command {
        Command::Rules { command: RulesCommand::Check { file, strict } } => Ok(rules_check(&file, strict)),
        Command::Rules { command: RulesCommand::Test { file, events } } => Ok(rules_test(&file, &events)),
        Command::Run(args) => {
            let mut config = load_config()?;
            if let Some(r) = args.rules {
                config.rules.path = r;
            }
            if args.rebuild {
                config.pipeline.rebuild_lost_state = true;
            }
            run_scorer(config).await
        }
        Command::Notify(args) => crate::notify::command(args, load_config).await,
        Command::Adjust(args) => adjust(&load_config()?, args).await,
        Command::Backfill(args) => {
            crate::shadow::backfill(load_config()?, args).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Promote(args) => {
            crate::shadow::promote(&load_config()?, args).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            let config = load_config()?;
            simulate(&config, args).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Alerts(args) => {
            let config = load_config()?;
            let client = kafka_client(&config, args.brokers.as_deref());
            let default = if args.shadow {
                &config.topics.shadow_alerts
            } else if args.accounts {
                &config.topics.account_alerts
            } else {
                &config.topics.alerts
            };
            let topic = args.topic.unwrap_or(default.clone());
            eprintln!("Watching {topic} for alerts (Ctrl-C to stop) ...");
            let (from_beginning, accounts) = (args.from_beginning, args.accounts);
            crate::kafka::print_alerts(&client, &topic, from_beginning, accounts, crate::shutdown_signal()).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Score(args) => {
            let config = load_config()?;
            let rules = load_rules_file(args.rules.as_deref().unwrap_or(&config.rules.path))?;
            let partitions = crate::kafka::partition_count(&config.client_config(), &config.topics.input)
                .with_context(|| format!("cannot read the partitions of {}", config.topics.input))?;
            let store = crate::store::Store::connect_with(&config.redis)
                .await
                .context("cannot connect to Redis (redis.url)")?;
            match store.find_contact(&config.topics.input, partitions, &args.contact_id, &rules).await? {
                None => {
                    eprintln!("contact {} has no score", args.contact_id);
                    Ok(std::process::ExitCode::from(1))
                }
                Some((p, value)) => {
                    let now = crate::decode::now_ms();
                    let view = crate::query::contact_view(&rules, &args.contact_id, p, &value, now, &config.privacy)
                        .with_context(|| format!("the stored state of {} cannot be read", args.contact_id))?;
                    let view = crate::shadow::add_shadows(&store, &rules, &config.topics.input, view, now).await?;
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&view)?);
                    } else {
                        print!("{}", crate::query::render(&view));
                    }
                    Ok(std::process::ExitCode::SUCCESS)
                }
            }
        }
        Command::History(args) => {
            let config = load_config()?;
            history(&config, args).await
        }
        Command::Account(args) => account(&load_config()?, args).await,
        Command::Top(args) => {
            let mut config = load_config()?;
            if let Some(r) = args.rules {
                config.rules.path = r;
            }
            let rules = load_rules_file(&config.rules.path)?;
            let Some(model) = rules.models.iter().find(|m| m.name == args.model) else {
                anyhow::bail!("no model `{}` in {}", args.model, config.rules.path.display());
            };
            let partitions = crate::kafka::partition_count(&config.client_config(), &config.topics.input)
                .with_context(|| format!("cannot read the partitions of {}", config.topics.input))?;
            let store = crate::store::Store::connect_with(&config.redis)
                .await
                .context("cannot connect to Redis (redis.url)")?;
            let now = crate::decode::now_ms();
            let floor = crate::query::leaderboard_least_entry(model, args.min_score.filter(|x| *x > 0.0), now);
            let limit = args.limit.clamp(1, 1000);
            let all = store.leaderboard_top(&config.topics.input, partitions, &model.name, floor, limit).await?;
            println!("{:>4}  {:<24} {:>10}", "rank", "contact", "score");
            for (i, (contact, z, _)) in all.iter().enumerate() {
                println!("{:>4}  {:<24} {:>10.2}", i + 1, contact, crate::query::leaderboard_value(model, *z, now));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Compare(args) => compare(&load_config()?, args).await,
        Command::Erase(args) => {
            let config = load_config()?;
            let client = kafka_client(&config, args.brokers.as_deref());
            let event = crate::kafka::erasure_request(&args.contact, &args.by, &args.reason, crate::decode::now_ms());
            let producer = crate::kafka::event_producer(&client)?;
            let (partition, offset) = crate::kafka::send_event(&producer, &config.topics.input, &event).await?;
            println!(
                "Erasure requested ({}, partition {partition} offset {offset} of {}): the partition's owner erases the contact when it reads it; the record goes to {}.",
                event.event_id, config.topics.input, config.topics.erasures
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Topics(args) => {
            let config = load_config()?;
            let client = kafka_client(&config, args.brokers.as_deref());
            let t = &config.topics;
            crate::kafka::create_topics(
                &client,
                &[
                    (&t.input, args.partitions),
                    (&t.alerts, args.partitions),
                    (&t.dead_letter, 1),
                    (&t.erasures, 1),
                    (&t.shadow_alerts, args.partitions),
                    (&t.account_contributions, args.partitions),
                    (&t.account_alerts, args.partitions),
                    (&config.notify.dead_letter_topic, 1),
                ],
                args.replication,
            )
            .await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// `hotlead account ID`: the account's view at `--at` (default now); exit
/// code 1 for an account with no score.
async fn account(config: &Config, args: AccountArgs) -> anyhow::Result<std::process::ExitCode> {
    let rules = load_rules_file(args.rules.as_deref().unwrap_or(&config.rules.path))?;
    let at = match &args.at {
        None => crate::decode::now_ms(),
        Some(t) => crate::history::parse_time(t)
            .with_context(|| format!("--at `{t}` is not RFC 3339 time or milliseconds since 1970"))?,
    };
    let topic = &config.topics.account_contributions;
    let partitions = crate::kafka::partition_count(&config.client_config(), topic)
        .with_context(|| format!("cannot read the partitions of {topic} (topics.account_contributions)"))?;
    let store =
        crate::store::Store::connect_with(&config.redis).await.context("cannot connect to Redis (redis.url)")?;
    match crate::account_query::find(&store, topic, partitions, &args.account_id).await? {
        None => {
            eprintln!("account {} has no score", args.account_id);
            Ok(std::process::ExitCode::from(1))
        }
        Some((p, state)) => {
            let view = crate::account_query::view(&rules, &args.account_id, p, &state, at);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", crate::account_query::render(&view));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn kafka_client(config: &Config, brokers: Option<&str>) -> rdkafka::ClientConfig {
    let mut c = config.client_config();
    if let Some(b) = brokers {
        c.set("bootstrap.servers", b);
    }
    c
}

/// Loads the rules file a command needs; a file that cannot be read is
/// named, with how to point at another.
pub fn load_rules_file(path: &std::path::Path) -> anyhow::Result<RuleSet> {
    RuleSet::load(path).map_err(rules_hint)
}

/// A rules error, with where the file comes from when it cannot be read.
pub fn rules_hint(e: crate::rules::RulesError) -> anyhow::Error {
    match e {
        crate::rules::RulesError::Io { .. } => anyhow::anyhow!(
            "{e}\n  (the rules file comes from `rules.path` of the configuration, default examples/rules.yaml; point at another with `--rules FILE`, `rules.path` in the file given by `--config`, or HOTLEAD_RULES__PATH)"
        ),
        e => e.into(),
    }
}

/// An error and its causes on one line, each cause said once: a cause whose
/// text is already part of the message is not repeated.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn rules_check(file: &std::path::Path, strict: bool) -> std::process::ExitCode {
    let text = match crate::rules::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let checked = RuleSet::check(&text);
    for p in checked.errors.iter().chain(&checked.warnings) {
        eprintln!("{}:{p}", file.display());
    }
    let refused = !checked.errors.is_empty() || (strict && !checked.warnings.is_empty());
    match checked.rules {
        Some(rs) if !refused => {
            for m in &rs.models {
                let mut tiers = vec![m.base_tier.clone()];
                for t in &m.tiers {
                    let mut s = format!("{} ≥{} (exit <{})", t.name, t.enter, t.exit);
                    for r in &t.requires {
                        s.push_str(&format!(" and {} ≥{}", r.model_name, r.enter));
                    }
                    if !t.alert {
                        s.push_str(" no alert");
                    }
                    tiers.push(s);
                }
                println!(
                    "{}: model `{}` v{}: {} rules, {} fit rules, half-life {}, tiers: {}",
                    file.display(),
                    m.name,
                    m.version,
                    m.rules.len(),
                    m.fit.len(),
                    crate::rules::describe::duration(m.half_life_secs),
                    tiers.join(" | ")
                );
                if let Some(a) = &m.account {
                    let mut tiers = vec![a.base_tier.clone()];
                    for t in &a.tiers {
                        let mut s = format!("{} ≥{} (exit <{})", t.name, t.enter, t.exit);
                        if t.min_contacts > 0 {
                            s.push_str(&format!(" and {} contacts", t.min_contacts));
                        }
                        if !t.alert {
                            s.push_str(" no alert");
                        }
                        tiers.push(s);
                    }
                    let weights =
                        a.weights.as_ref().map_or(String::new(), |w| format!(", weighted by {}", w.attribute));
                    println!(
                        "{}: model `{}` rolls up into accounts: {}{weights}, breadth at {}, account tiers: {}",
                        file.display(),
                        m.name,
                        a.top.map_or("sum of all contacts".to_string(), |n| format!("sum of the top {n} contacts")),
                        m.tier_name(a.breadth_tier),
                        tiers.join(" | ")
                    );
                }
            }
            match checked.warnings.len() {
                0 => println!("{}: ok", file.display()),
                n => println!("{}: ok, {n} warning{}", file.display(), if n == 1 { "" } else { "s" }),
            }
            std::process::ExitCode::SUCCESS
        }
        _ => {
            let (e, w) = (checked.errors.len(), checked.warnings.len());
            if e > 0 {
                eprintln!("{}: refused: {e} error{}", file.display(), if e == 1 { "" } else { "s" });
            } else {
                eprintln!("{}: refused under --strict: {w} warning{}", file.display(), if w == 1 { "" } else { "s" });
            }
            std::process::ExitCode::from(1)
        }
    }
}

fn rules_test(file: &std::path::Path, events: &std::path::Path) -> std::process::ExitCode {
    let rules = match RuleSet::load(file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let text = match std::fs::read_to_string(events) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", events.display());
            return std::process::ExitCode::from(1);
        }
    };
    let mut parsed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match crate::replay::parse_event(line) {
            Ok(e) => parsed.push(e),
            Err(e) => {
                eprintln!("error: {}:{}: {e}", events.display(), i + 1);
                return std::process::ExitCode::from(1);
            }
        }
    }
    print!("{}", crate::replay::render(&crate::replay::replay(&rules, &parsed)));
    std::process::ExitCode::SUCCESS
}

async fn run_scorer(config: Config) -> anyhow::Result<std::process::ExitCode> {
    crate::service::run(config, crate::shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn simulate(config: &Config, args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.anonymous_share),
        "--anonymous-share is a share of contacts, from 0 to 1, not {}",
        args.anonymous_share
    );
    let sim_config = SimConfig {
        contacts: args.contacts,
        zipf_exponent: args.zipf,
        seed: args.seed,
        anonymous_share: args.anonymous_share,
        buying_groups: args.buying_groups,
        ..SimConfig::default()
    };
    if let Some(path) = &args.jsonl {
        anyhow::ensure!(args.total > 0, "--jsonl needs --total: how many events to write");
        let mut sim = Simulator::new(&sim_config);
        let end = crate::decode::now_ms() / 1000 * 1000;
        let start = end - (args.total as i64 - 1) * 60_000;
        let mut out = String::new();
        for i in 0..args.total as i64 {
            out.push_str(&crate::replay::to_json(&sim.next_event(start + i * 60_000)));
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("simulate: wrote {} events to {}", args.total, path.display());
        return Ok(());
    }
    let mut client = kafka_client(config, args.brokers.as_deref());
    client.set("linger.ms", "20").set("enable.idempotence", "true");
    let producer: FutureProducer = client.create()?;
    let topic = args.topic.unwrap_or(config.topics.input.clone());
    let mut sim = Simulator::new(&sim_config);
    eprintln!(
        "Simulating {} contacts into {topic} at {} events/s{} (seed {}) ...",
        args.contacts,
        if args.rate > 0.0 { args.rate.to_string() } else { "max".into() },
        if args.total > 0 { format!(", {} events", args.total) } else { String::new() },
        args.seed
    );
    let shutdown = crate::shutdown_signal().shared();
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut sent: u64 = 0;
    let mut failed: u64 = 0;
    let mut inflight = FuturesUnordered::new();
    loop {
        if (args.total > 0 && sent >= args.total) || shutdown.clone().now_or_never().is_some() {
            break;
        }
        let due = if args.rate > 0.0 { (start.elapsed().as_secs_f64() * args.rate) as u64 + 1 } else { sent + 1000 };
        let due = if args.total > 0 { due.min(args.total) } else { due };
        while sent < due {
            let now = crate::decode::now_ms();
            let mut event = sim.next_event(now);
            sent += 1;
            let payload = if args.poison_every > 0 && sent % args.poison_every == 0 {
                poison(&mut event, sent, now)
            } else {
                event.encode_to_vec()
            };
            let mut record = FutureRecord::to(&topic).key(&event.contact_id).payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        inflight.push(delivery);
                        break;
                    }
                    Err((e, r)) => {
                        // The local queue is full: wait for a delivery, then retry.
                        record = r;
                        match inflight.next().await {
                            Some(Ok(Err((e, _)))) => {
                                failed += 1;
                                tracing::warn!(error = %e, "Event not delivered.");
                            }
                            None => anyhow::bail!("cannot produce: {e}"),
                            _ => {}
                        }
                    }
                }
            }
        }
        while let Some(Some(r)) = inflight.next().now_or_never() {
            if let Ok(Err((e, _))) = r {
                failed += 1;
                tracing::warn!(error = %e, "Event not delivered.");
            }
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("simulate: {sent} events sent ({:.0}/s)", sent as f64 / start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if args.rate > 0.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    while let Some(r) = inflight.next().await {
        if let Ok(Err((e, _))) = r {
            failed += 1;
            tracing::warn!(error = %e, "Event not delivered.");
        }
    }
    eprintln!("simulate: done, {sent} events sent, {failed} failed, in {:.1}s", start.elapsed().as_secs_f64());
    if failed > 0 {
        anyhow::bail!("{failed} events were not delivered");
    }
    Ok(())
}

/// `hotlead history`: the contact's partition read up to its watermark and
/// scored again, as the read API's history route does.
async fn history(config: &Config, args: HistoryArgs) -> anyhow::Result<std::process::ExitCode> {
    let rules = load_rules_file(args.rules.as_deref().unwrap_or(&config.rules.path))?;
    let model = match &args.model {
        None => 0,
        Some(name) => rules.models.iter().position(|m| &m.name == name).with_context(|| {
            let names: Vec<&str> = rules.models.iter().map(|m| m.name.as_str()).collect();
            format!("no model `{name}`; models: {}", names.join(", "))
        })?,
    };
    let time = |v: &Option<String>| {
        v.as_deref()
            .map(|t| {
                crate::history::parse_time(t).with_context(|| format!("`{t}` is not RFC 3339 time or milliseconds"))
            })
            .transpose()
    };
    let limit = args.limit.clamp(1, crate::history::MAX_LIMIT);
    let range = crate::history::Range { from: time(&args.from)?, to: time(&args.to)?, limit };
    let (client, topic) = (config.client_config(), &config.topics.input);
    let partitions = crate::kafka::partition_count(&client, topic)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let store =
        crate::store::Store::connect_with(&config.redis).await.context("cannot connect to Redis (redis.url)")?;
    let Some((partition, _)) = store.find_contact(topic, partitions, &args.contact_id, &rules).await? else {
        eprintln!("contact {} has no score", args.contact_id);
        return Ok(std::process::ExitCode::from(1));
    };
    let last = store.watermark(&crate::store::PartitionKeys::new(topic, partition)).await?.unwrap_or(-1);
    let timeout = crate::history::READ_TIMEOUT;
    let messages =
        crate::kafka::contact_messages(&client, topic, partition, last, &args.contact_id, &config.limits(), timeout)
            .with_context(|| format!("cannot read partition {partition} of {topic}"))?;
    let now = crate::decode::now_ms();
    let h = crate::history::history(&rules, model, &args.contact_id, messages, config.dedup(), now, range);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        print!("{}", crate::history::render(&h));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `hotlead compare`: the report as a table, or as JSON.
async fn compare(config: &Config, args: CompareArgs) -> anyhow::Result<std::process::ExitCode> {
    let rules = std::sync::Arc::new(load_rules_file(args.rules.as_deref().unwrap_or(&config.rules.path))?);
    let at = match &args.at {
        None => crate::decode::now_ms(),
        Some(t) => crate::history::parse_time(t)
            .with_context(|| format!("--at `{t}` is neither RFC 3339 time nor milliseconds"))?,
    };
    let topic = &config.topics.input;
    let partitions = crate::kafka::partition_count(&config.client_config(), topic)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let store =
        crate::store::Store::connect_with(&config.redis).await.context("cannot connect to Redis (redis.url)")?;
    let top = args.top.clamp(1, 1000);
    let report = crate::compare::compare(&store, &rules, topic, partitions, &args.live, &args.shadow, at, top).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::compare::render(&report));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `hotlead adjust`: the same event the write API produces, checked the
/// same way, produced to the input topic.
async fn adjust(config: &Config, args: AdjustArgs) -> anyhow::Result<std::process::ExitCode> {
    let rules = load_rules_file(args.rules.as_deref().unwrap_or(&config.rules.path))?;
    let request = crate::adjust::Request {
        model: args.model,
        points: args.points,
        reason: args.reason,
        by: args.by,
        reset: args.reset,
        occurred_at: args.at.map(serde_json::Value::String),
        event_id: args.event_id,
    };
    let event = crate::adjust::check_model(&rules, &request.model)
        .and_then(|()| request.event(&args.contact_id, &config.limits(), crate::decode::now_ms()));
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let producer = crate::kafka::event_producer(&kafka_client(config, args.brokers.as_deref()))?;
    let topic = &config.topics.input;
    let (partition, offset) = crate::kafka::send_event(&producer, topic, &event).await.with_context(|| {
        format!("cannot produce to {topic}; run again with --event-id {} to count it once", event.event_id)
    })?;
    println!("{} for {}: {topic} partition {partition} offset {offset}", event.event_id, event.contact_id);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Turns an event into one of several kinds of unscorable input.
fn poison(event: &mut crate::proto::InteractionEvent, n: u64, now: i64) -> Vec<u8> {
    match n % 3 {
        0 => b"\xff\xfe not a protobuf \x00\x01".to_vec(),
        1 => {
            event.occurred_at = Some(crate::decode::timestamp(now + 365 * 86_400_000));
            event.encode_to_vec()
        }
        _ => {
            let mut e = event.clone();
            e.contact_id.clear();
            e.encode_to_vec()
        }
    }
}
