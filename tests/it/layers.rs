//! The layering docs/architecture.md draws, checked on the source: a lower layer names
//! nothing above it, and remote/'s files import each other in one direction only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

#[test]
fn lower_layers_name_nothing_above_them() {
    // The same rules as the grep in docs/architecture.md ("it prints nothing").
    let rules: [(&str, &[&str]); 3] = [
        ("cache", &["crate::remote", "crate::maintain", "crate::cli"]),
        (
            "format",
            &[
                "crate::remote",
                "crate::maintain",
                "crate::cli",
                "crate::cache",
            ],
        ),
        (
            "convert",
            &[
                "crate::cache",
                "crate::remote",
                "crate::maintain",
                "crate::cli",
            ],
        ),
    ];
    let mut found = Vec::new();
    for (layer, above) in rules {
        for f in sources(&src(layer)) {
            for (i, line) in fs::read_to_string(&f).unwrap().lines().enumerate() {
                if let Some(up) = above.iter().find(|a| line.contains(*a)) {
                    found.push(format!("{}:{}: {up}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "a lower layer names one above it:\n{}",
        found.join("\n")
    );
}

#[test]
fn remote_files_import_each_other_without_a_circle() {
    // Each file of src/remote/ and the files it names through `super::` (src/remote/mod.rs's
    // doc draws the order); a circle would make the layers there a fiction.
    let dir = src("remote");
    let files: BTreeSet<String> = sources(&dir)
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| s != "mod")
        .collect();
    assert!(files.len() >= 10, "src/remote/ holds {files:?}");
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let text = fs::read_to_string(dir.join(format!("{f}.rs"))).unwrap();
        // Only the file's own code: not its docs (a link is no import), not its unit
        // tests (they may reach anywhere).
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // Every `use super::...;` statement (nested braces too), and every path
        // `super::NAME::` in the code.
        let mut said = String::new();
        for part in code.split("use super::").skip(1) {
            said.push_str(part.split(';').next().unwrap_or(""));
            said.push(' ');
        }
        for part in code.split("super::").skip(1) {
            said.push_str(
                part.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or(""),
            );
            said.push(' ');
        }
        let words: BTreeSet<&str> = said
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .collect();
        let named: BTreeSet<String> = files
            .iter()
            .filter(|g| *g != f && words.contains(g.as_str()))
            .cloned()
            .collect();
        uses.insert(f.clone(), named);
    }
    // Depth-first search for a back edge.
    fn visit(
        f: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(f).copied() {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == f).unwrap();
                let mut circle = path[at..].to_vec();
                circle.push(f.to_string());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(f.to_string(), 1);
        path.push(f.to_string());
        for g in uses.get(f).into_iter().flatten() {
            if let Some(c) = visit(g, uses, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(f.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for f in &files {
        let circle = visit(f, &uses, &mut state, &mut Vec::new());
        assert!(
            circle.is_none(),
            "a circle in src/remote/: {}",
            circle.unwrap().join(" -> ")
        );
    }
    // The leaf is a leaf: the transport names no protocol.
    let transport = &uses["transport"];
    for p in ["oci", "docker", "http", "s3", "registry", "auth", "sink"] {
        assert!(
            !transport.contains(p),
            "transport.rs imports {p}: {transport:?}"
        );
    }
}
