//! Keeps the layers of `src/` honest: every `crate::…` path in a source file
//! must name a module of its own layer or of a lower one. The order is the
//! one ARCHITECTURE.md draws, bottom up:
//!
//! ```text
//! sys · sync, addr · error · observe · device · mm · placement · pressure · cpu · gpu · api
//! ```
//!
//! The core (`mm`) decides no placement, so `placement` sits above it. Two
//! modules on one rank (`sync` and `addr`) may not import each other either:
//! only a module's own folder is shared ground, so a cycle can exist only
//! inside one folder.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Layer names and ranks, bottom up.
const LAYERS: &[(&str, u32)] = &[
    ("sys", 0),
    ("sync", 1),
    ("addr", 1),
    ("error", 2),
    ("observe", 3),
    ("device", 4),
    ("mm", 5),
    ("placement", 6),
    ("pressure", 7),
    ("cpu", 8),
    ("gpu", 9),
    ("api", 10),
];

fn rank(layer: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == layer).map(|(_, r)| *r)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layer a file belongs to: its top folder or file name under `src/`.
fn layer_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its comments (doc links may point anywhere).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::<module>` named in `code`, with its line number.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
            rest = tail;
        }
    }
    out
}

/// `(file, line, from-layer, to-layer)` for every import that points up or
/// sideways.
fn violations(src: &Path) -> Vec<(String, usize, String, String)> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let from = layer_of(src, &f);
        if from == "lib" {
            continue; // the crate root declares the layers and re-exports
        }
        let from_rank = rank(&from).unwrap_or_else(|| {
            panic!(
                "{} is in no layer: add `{from}` to LAYERS in tests/layers.rs and to ARCHITECTURE.md",
                f.display()
            )
        });
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, to) in crate_paths(&code(&text)) {
            if to == from {
                continue;
            }
            match rank(&to) {
                // A re-export at the crate root (`crate::Svm`): resolve it by hand.
                None => bad.push((f.display().to_string(), line, from.clone(), to)),
                Some(r) if r >= from_rank => {
                    bad.push((f.display().to_string(), line, from.clone(), to))
                }
                Some(_) => {}
            }
        }
    }
    bad
}

#[test]
fn imports_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports that run up or sideways between layers (or through a crate-root \
         re-export):\n{}",
        bad.iter()
            .map(|(f, l, from, to)| format!("  {f}:{l}: {from} -> {to}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The check itself must be able to fail: a file that imports upward is caught.
#[test]
fn an_upward_import_is_caught() {
    let dir = std::env::temp_dir().join(format!("svmem-layers-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("mm")).unwrap();
    std::fs::write(
        src.join("mm/bad.rs"),
        "// crate::api in a comment is fine\nuse crate::api::Svm;\nuse crate::addr::PAGE_SIZE;\n",
    )
    .unwrap();
    std::fs::write(src.join("mm/worse.rs"), "use crate::placement::Attr;\n").unwrap();
    std::fs::write(src.join("addr.rs"), "use crate::sync::Ordering;\n").unwrap();
    let bad = violations(&src);
    std::fs::remove_dir_all(&dir).unwrap();
    let found: Vec<_> = bad
        .iter()
        .map(|(_, l, f, t)| (*l, f.as_str(), t.as_str()))
        .collect();
    assert!(found.contains(&(2, "mm", "api")), "{found:?}");
    assert!(found.contains(&(1, "mm", "placement")), "{found:?}");
    assert!(found.contains(&(1, "addr", "sync")), "{found:?}");
    assert_eq!(found.len(), 3, "{found:?}");
}
