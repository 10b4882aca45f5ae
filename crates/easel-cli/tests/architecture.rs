//! docs/architecture.md draws the crate graph; this checks it against `cargo metadata`: every
//! workspace crate appears once, with exactly the easel crates it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The workspace's normal dependencies between its own crates.
fn metadata_graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|n| names.contains(n))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// The graph the first code block of docs/architecture.md draws: `A ──► B, C` (continued on
/// indented lines), and `X, Y: no easel crate`.
fn drawn_graph() -> Graph {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/architecture.md"),
    )
    .unwrap();
    let block = doc
        .split("```")
        .nth(1)
        .expect("docs/architecture.md has a code block");
    let mut graph = Graph::new();
    let mut current: Option<String> = None;
    let list = |text: &str| -> Vec<String> {
        text.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        if let Some((from, to)) = line.split_once("──►") {
            let from = from.trim().to_string();
            assert!(!graph.contains_key(&from), "{from} is drawn twice");
            graph.insert(from.clone(), list(to).into_iter().collect());
            current = Some(from);
        } else if let Some(leaves) = line.strip_suffix(": no easel crate") {
            for leaf in list(leaves) {
                assert!(
                    graph.insert(leaf.clone(), BTreeSet::new()).is_none(),
                    "{leaf} twice"
                );
            }
            current = None;
        } else if line.starts_with(' ') {
            let from = current
                .clone()
                .expect("a continuation line follows an arrow");
            graph.get_mut(&from).unwrap().extend(list(line));
        } else {
            panic!("unreadable line in the crate graph: {line:?}");
        }
    }
    graph
}

#[test]
fn the_architecture_doc_draws_the_real_crate_graph() {
    let (drawn, real) = (drawn_graph(), metadata_graph());
    assert_eq!(
        drawn.keys().collect::<Vec<_>>(),
        real.keys().collect::<Vec<_>>(),
        "crates drawn vs in the workspace"
    );
    for (name, deps) in &real {
        assert_eq!(&drawn[name], deps, "the dependencies of {name}");
    }
}
