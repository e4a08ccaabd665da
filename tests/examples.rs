//! Every rules file the project ships passes `hotlead rules check`: the
//! examples, the benchmark's, the Kubernetes rules ConfigMap's, and the YAML
//! in the docs; the shipped configuration files load.

use std::path::Path;

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
    for f in ["examples/models.yaml", "examples/rules.yaml", "bench/rules.yaml", "deploy/kubernetes/rules.yaml"] {
        check(&std::fs::read_to_string(root().join(f)).unwrap(), f);
    }
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
