//! hotlead on a Redis Cluster of three masters on loopback: every partition's
//! keys share a slot, so each batch commits atomically on whichever master
//! owns it; scores and alerts equal the offline oracle across a restart.
//!
//! Set `HOTLEAD_TEST_REDIS_CLUSTER` (comma-separated seed URLs) to use an
//! external cluster instead.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotlead::proto::ScoreAlert;
use hotlead::rules::RuleSet;
use hotlead::simulate::{SimConfig, Simulator};
use prost::Message as _;
use support::{free_port, spawn_pipeline, Stack, Topics};

/// Three Redis Cluster masters in temp dirs, stopped on drop.
struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for p in &ports {
            let d = dir.path().join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            children.push(
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                    .args(["--cluster-node-timeout", "5000", "--maxmemory-policy", "noeviction"])
                    .arg("--dir")
                    .arg(&d)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server; run scripts/setup.sh"),
            );
        }
        for p in &ports {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(Instant::now() < deadline, "redis-server on {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in &ports {
            loop {
                let info = Command::new("redis-cli").args(["-p", &p.to_string(), "cluster", "info"]).output().unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { ports, children, _dir: dir }
    }

    fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn watermarks(conn: &mut redis::cluster::ClusterConnection, topics: &Topics) -> HashMap<i32, i64> {
    (0..topics.partitions)
        .filter_map(|p| {
            let key = hotlead::store::PartitionKeys::new(&topics.input, p).watermark();
            let w: Option<i64> = redis::cmd("GET").arg(key).query(conn).unwrap();
            w.map(|w| (p, w))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_and_alerts_on_a_redis_cluster_equal_the_oracle() {
    let stack = Stack::start();
    let topics = stack.topics(6).await;
    let local = std::env::var("HOTLEAD_TEST_REDIS_CLUSTER").is_err().then(RedisCluster::start);
    let urls = std::env::var("HOTLEAD_TEST_REDIS_CLUSTER").unwrap_or_else(|_| local.as_ref().unwrap().urls());
    let rules_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models.yaml");
    let rules = RuleSet::load(&rules_path).unwrap();
    let mut env = stack.env(&topics, &rules_path);
    env.retain(|(k, _)| k != "HOTLEAD_REDIS__URL");
    env.push(("HOTLEAD_REDIS__URL".into(), urls.clone()));
    env.push(("HOTLEAD_REDIS__CLUSTER".into(), "true".into()));
    env.push(("HOTLEAD_PIPELINE__BATCH_MAX_EVENTS".into(), "25".into()));
    let config = || hotlead::config::Config::from_parts("", env.clone()).unwrap();
    let mut cluster =
        redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>()).unwrap().get_connection().unwrap();

    let base = hotlead::decode::now_ms() - 2 * 86_400_000;
    let mut sim = Simulator::new(&SimConfig { contacts: 300, seed: 5, ..SimConfig::default() });
    let events: Vec<_> = (0..3000).map(|i| sim.next_event(base + i * 30_000)).collect();
    let delivered = stack.produce_events(&topics.input, &events).await;
    let last = support::last_offsets(&delivered);

    // Part of the way, a graceful restart, then the rest.
    let running = spawn_pipeline(config(), &rules_path);
    let deadline = Instant::now() + Duration::from_secs(60);
    while watermarks(&mut cluster, &topics).values().map(|w| w + 1).sum::<i64>() < 600 {
        assert!(Instant::now() < deadline, "nothing applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.finish().await;
    let running = spawn_pipeline(config(), &rules_path);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let w = watermarks(&mut cluster, &topics);
        if last.iter().all(|(p, o)| w.get(p).is_some_and(|x| x >= o)) {
            break;
        }
        assert!(Instant::now() < deadline, "not applied: {w:?} want {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.finish().await;

    // The partitions' state is spread over the masters.
    if let Some(c) = &local {
        let used = c
            .ports
            .iter()
            .filter(|p| {
                let out = Command::new("redis-cli").args(["-p", &p.to_string(), "dbsize"]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0) > 0
            })
            .count();
        assert!(used >= 2, "state on {used} of 3 masters");
    }

    // The oracle.
    let oracle = support::oracle(&rules, &topics, support::landed(&events, &delivered));
    let want_alerts = oracle.alerts;
    let mut checked = 0;
    for (p, contact, fields) in oracle.contacts {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(&contact);
        let stored = support::stored_fields(&mut cluster, &rules, &key);
        for (f, want) in fields {
            let got = stored.get(&f);
            assert!(support::field_matches(&f, got, &want), "{contact} {f}: {got:?} vs {want}");
        }
        checked += 1;
    }
    assert!(checked > 200, "{checked}");
    let got: BTreeSet<String> = stack
        .read_all(&topics.alerts, usize::MAX, Duration::from_secs(5))
        .await
        .iter()
        .map(|r| ScoreAlert::decode(r.payload.as_slice()).unwrap().alert_id)
        .collect();
    assert!(want_alerts.len() > 20);
    assert_eq!(got, want_alerts, "the distinct alert ids equal the oracle's");
}
