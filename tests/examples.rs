//! Every rules file the project ships passes `hotlead rules check`: the
//! examples, the benchmark's, the Kubernetes rules ConfigMap's, and the YAML
//! in the docs; the shipped configuration files load. The demo's alert
//! stream carries only the crossings its models mark as alerts.

mod support;

use std::path::Path;
use std::time::Duration;

use prost::Message as _;
use support::{last_offsets, spawn_pipeline, Stack};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn check(text: &str, origin: &str) {
    if let Err(e) = hotlead::rules::RuleSet::parse(text, origin) {
        panic!("{e}");
    }
}

#[test]
fn example_rules_files_pass_the_check() {
    for f in [
        "examples/models.yaml",
        "examples/rules.yaml",
        "examples/engagement-v2.yaml",
        "bench/rules.yaml",
        "bench/rules-v2.yaml",
        "deploy/kubernetes/rules.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        check(&text, f);
        let warnings = hotlead::rules::RuleSet::check(&text).warnings;
        assert!(warnings.is_empty(), "{f} passes `rules check --strict`: {warnings:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_alerts_sales_only_on_the_crossings_its_models_mark() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let path = root().join("examples/models.yaml");
    let rules = hotlead::rules::RuleSet::load(&path).unwrap();
    // The demo's stream: `hotlead simulate` with its defaults, seed 42
    // (buying groups included).
    let mut sim = hotlead::simulate::Simulator::new(&hotlead::simulate::SimConfig {
        contacts: 150,
        seed: 42,
        anonymous_share: 0.2,
        buying_groups: true,
        ..Default::default()
    });
    let start = hotlead::decode::now_ms() - 2 * 86_400_000;
    let events: Vec<_> = (0..3000).map(|i| sim.next_event(start + i * 50_000)).collect();
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(120)).await;
    running.finish().await;

    let alerts: Vec<hotlead::proto::ScoreAlert> = stack
        .read_all(&topics.alerts, usize::MAX, Duration::from_secs(10))
        .await
        .iter()
        .map(|r| hotlead::proto::ScoreAlert::decode(r.payload.as_slice()).unwrap())
        .collect();
    assert!(alerts.len() >= 5, "the demo raises alerts: {}", alerts.len());
    for a in &alerts {
        let m = rules.models.iter().find(|m| m.name == a.model).unwrap();
        let (from, to) = (m.tier_index(&a.previous_tier), m.tier_index(&a.tier));
        assert!(m.alerts_on(from, to), "{} {} -> {} is not marked as an alert", a.model, a.previous_tier, a.tier);
        let heated = a.direction == hotlead::proto::score_alert::Direction::Heated as i32;
        assert!(!heated || ["hot", "sales-ready"].contains(&a.tier.as_str()), "{a:?}");
    }
    // Fit and warm crossings still happened: they move tiers, not sales.
    let report = hotlead::replay::replay(&rules, &events);
    let in_tier = |model: &str, tier: &str| {
        report.contacts.values().flatten().filter(|v| v.model == model && v.tier == tier).count()
    };
    assert!(in_tier("fit", "good-fit") > 0 && in_tier("engagement", "warm") > 0, "nothing was suppressed");
    assert!(alerts.iter().all(|a| a.model == "engagement"), "no fit alert reaches sales");
    // (Cooling by the clock is the service's alone: compare what events
    // raised. A contact a visitor merged into is left out: the whole stream
    // was in the topic before the service started, so the visitor's state
    // reached it after the contact's own later events, where `rules test`
    // applies it right after the identify; its score is the same either way,
    // its path through the tiers need not be.)
    let merged: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| match &e.interaction {
            Some(hotlead::proto::interaction_event::Interaction::Identify(i)) => Some(i.contact_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(!merged.is_empty(), "the demo's stream has visitors who identify");
    let heated = |all: &[hotlead::proto::ScoreAlert]| {
        all.iter()
            .filter(|a| a.direction == hotlead::proto::score_alert::Direction::Heated as i32)
            .filter(|a| !merged.contains(a.contact_id.as_str()))
            .count()
    };
    assert_eq!(heated(&alerts), heated(&report.alerts), "the service alerts as `rules test` does");
}

#[test]
fn shipped_configuration_files_load() {
    for f in ["examples/demo.toml", "deploy/kubernetes/hotlead.toml"] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        if let Err(e) = hotlead::config::Config::from_parts(&text, []) {
            panic!("{f}: {e}");
        }
    }
}

#[test]
fn shipped_configurations_serve_privately() {
    use hotlead::config::Config;
    let load = |f: &str, env: &[(&str, &str)]| {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        Config::from_parts(&text, env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    };
    // The demo serves on loopback: no token needed.
    load("examples/demo.toml", &[]).check_serving().unwrap();
    // Kubernetes listens on 0.0.0.0: it serves with the token the Deployment
    // takes from the Secret, and refuses without it.
    let k8s = "deploy/kubernetes/hotlead.toml";
    load(k8s, &[("HOTLEAD_HTTP__TOKEN", "from-the-secret")]).check_serving().unwrap();
    let e = load(k8s, &[]).check_serving().unwrap_err().to_string();
    assert!(e.contains("http.listen = 0.0.0.0:9464") && e.contains("http.token"), "{e}");
}

fn check_blocks(doc: &str) -> usize {
    let text = std::fs::read_to_string(root().join(doc)).unwrap();
    let mut checked = 0;
    for block in text.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        if yaml.trim_start().starts_with("models:") {
            check(yaml, doc);
            checked += 1;
        }
    }
    checked
}

#[test]
fn rules_files_in_the_docs_pass_the_check() {
    assert!(check_blocks("docs/rules.md") >= 2, "docs/rules.md shows whole rules files");
    assert!(check_blocks("README.md") >= 1, "the README shows a rules file");
}
