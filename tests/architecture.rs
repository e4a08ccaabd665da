//! The module tree reads as the flow, and the scoring engine stays pure:
//! nothing under `src/engine/` may reach Kafka, Redis, the telemetry
//! module, the runtime or the clock.

use std::path::Path;

#[test]
fn the_engine_imports_no_io() {
    let forbidden =
        ["rdkafka", "redis", "telemetry", "tokio", "tracing", "metrics", "SystemTime", "Instant", "pipeline", "store"];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                let found = code.match_indices(word).any(|(i, _)| {
                    let before = code[..i].chars().last();
                    let after = code[i + word.len()..].chars().next();
                    let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                    boundary(before) && boundary(after)
                });
                assert!(!found, "{}:{}: the engine must not use `{word}`: {line}", path.display(), n + 1);
            }
        }
    }
    assert!(files >= 2, "the engine's files were read");
}
