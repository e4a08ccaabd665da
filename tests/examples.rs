//! Every rules file the project ships passes `hotlead rules check`: the
//! examples, the Kubernetes ConfigMap, and the YAML in docs/rules.md.

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
    for f in ["examples/models.yaml", "examples/rules.yaml"] {
        check(&std::fs::read_to_string(root().join(f)).unwrap(), f);
    }
}

#[test]
fn the_kubernetes_configmap_rules_pass_the_check() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/hotlead.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let rules = docs
        .iter()
        .find_map(|d| d.get("data")?.get("rules.yaml")?.as_str().map(str::to_string))
        .expect("the ConfigMap holds rules.yaml");
    check(&rules, "deploy/kubernetes/hotlead.yaml rules.yaml");
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
