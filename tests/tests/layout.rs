//! The crates' dependency arrows and public surfaces, read from the repository (docs/design.md,
//! "The crates"): state below the node runtime, the three nodes on top of both, none importing
//! another, and every public module of a crate named in its `lib.rs` doc.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The workspace crates (`secretlog-*`) a crate's manifest depends on, dev-dependencies apart.
fn secretlog_dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = read(&format!("{krate}/Cargo.toml"));
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[dependencies]"
            && let Some(name) = line.split(['.', ' ', '=']).next().filter(|n| n.starts_with("secretlog-"))
        {
            out.insert(name.trim_start_matches("secretlog-").to_string());
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn dependency_arrows_point_down_from_the_nodes_to_the_runtime_and_the_state() {
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(secretlog_dependencies("schemas"), set(&[]), "schemas depends on no other crate");
    assert_eq!(secretlog_dependencies("state"), set(&["schemas"]), "state sits on schemas alone");
    assert_eq!(secretlog_dependencies("node"), set(&["schemas", "state"]), "the runtime sits on the state");
    for node in ["reader", "writer", "replicator"] {
        assert_eq!(
            secretlog_dependencies(node),
            set(&["node", "schemas", "state"]),
            "{node} runs on the runtime and the state, and imports no other node"
        );
    }
}

#[test]
fn no_node_names_another_node_in_its_code() {
    for (node, others) in [
        ("reader", ["secretlog_writer", "secretlog_replicator"]),
        ("writer", ["secretlog_reader", "secretlog_replicator"]),
        ("replicator", ["secretlog_reader", "secretlog_writer"]),
    ] {
        let mut files = Vec::new();
        rust_files(&repo().join(node).join("src"), &mut files);
        assert!(!files.is_empty(), "{node}/src has no Rust files");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            for other in others {
                assert!(!text.contains(other), "{} names {other}", file.display());
            }
        }
    }
    for lower in ["state", "node"] {
        let mut files = Vec::new();
        rust_files(&repo().join(lower).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            for node in ["secretlog_reader::", "secretlog_writer::", "secretlog_replicator::"] {
                assert!(!text.contains(node), "{} (below the nodes) names {node}", file.display());
            }
            if lower == "state" {
                assert!(!text.contains("secretlog_node::"), "{} (the state) names the runtime", file.display());
            }
        }
    }
}

#[test]
fn every_public_module_is_named_in_its_crates_lib_doc() {
    for krate in ["state", "node", "reader", "writer", "replicator"] {
        let lib = read(&format!("{krate}/src/lib.rs"));
        let doc: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
        let public: Vec<&str> =
            lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';').trim()).collect();
        assert!(!public.is_empty(), "{krate} has no public module");
        for module in public {
            assert!(
                doc.contains(&format!("[`{module}`]")) || doc.contains(&format!("[`{module}::")),
                "{krate}/src/lib.rs: public module {module} is not named in the crate doc"
            );
        }
    }
}
