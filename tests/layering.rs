//! The library's layers, read from its source: every `crate::` / `super::` path in `src/` is
//! resolved to the file it names, so a new import cycle fails CI instead of growing unseen.
//!
//! - No file imports a top-level module of a higher layer (the order ARCHITECTURE.md states).
//! - No two files outside `mod.rs` import each other, directly or around a circle.
//! - The binary (`main.rs`, `cli/`) sits on top and is not scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules bottom up; a module may use its own layer's module and any lower one.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["tensor"],
    &["quant"],
    &["backend"],
    &["checkpoint"],
    &["tokenizer"],
    &["model"],
    &["engine"],
    &["eval"],
    &["ptq"],
    &["server", "bench", "report", "vision"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Module path of a source file: `src/a/b.rs` and `src/a/b/mod.rs` are both `a::b`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_string());
        }
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text with `//` comments and string / char literals blanked, so paths in docs and
/// messages are not read as imports.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // a char literal ('"', '\'', '\n'); a lifetime (`'a`) is left alone
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += if b.get(i + 1) == Some(&b'\\') { 1 } else { 0 };
                i += 3;
                while i < b.len() && b[i - 1] != b'\'' {
                    i += 1;
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Paths written after `start` (which begins right after `crate::` / `super::`), with
/// `{a::b, c}` groups expanded; each path is a list of segments.
fn read_paths(b: &[u8], mut i: usize) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            // split the group at depth-1 commas and read each item
            let mut depth = 0;
            let mut j = i;
            let mut items = vec![i + 1];
            while j < b.len() {
                match b[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => items.push(j + 1),
                    _ => {}
                }
                j += 1;
            }
            let mut out = Vec::new();
            for s in items {
                for p in read_paths(b, s) {
                    let mut full = segs.clone();
                    full.extend(p);
                    out.push(full);
                }
            }
            return out;
        }
        let s = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if s == i {
            break;
        }
        segs.push(String::from_utf8_lossy(&b[s..i]).into_owned());
        if b.get(i..i + 2) == Some(b"::") {
            i += 2;
        } else {
            break;
        }
    }
    vec![segs]
}

/// Every absolute module path the file refers to through `crate::`, `super::` or `self::`.
fn references(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let preceded = i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':');
        let rest = &b[i..];
        let base: Option<(Vec<String>, usize)> = if preceded {
            None
        } else if rest.starts_with(b"crate::") {
            Some((Vec::new(), 7))
        } else if rest.starts_with(b"super::") || rest.starts_with(b"self::") {
            // `self` of a.rs is module a; `super` is its parent (mod.rs: the same rules)
            let mut base = module.to_vec();
            let mut k = 0;
            while b[i + k..].starts_with(b"super::") {
                base.pop();
                k += 7;
            }
            if k == 0 {
                k = 6;
            }
            Some((base, k))
        } else {
            None
        };
        match base {
            Some((base, skip)) => {
                for p in read_paths(b, i + skip) {
                    let mut full = base.clone();
                    full.extend(p);
                    out.push(full);
                }
                i += skip;
            }
            None => i += 1,
        }
    }
    out
}

struct Crate {
    /// module path → file (relative to src)
    files: BTreeMap<Vec<String>, PathBuf>,
    /// file → the files it refers to
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

fn scan() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    rust_files(&src, &mut all);
    let mut files = BTreeMap::new();
    let mut texts = Vec::new();
    for p in all {
        let rel = p.strip_prefix(&src).unwrap().to_path_buf();
        let first = rel.iter().next().unwrap().to_string_lossy().into_owned();
        if first == "main.rs" || first == "cli" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        files.insert(module_path(&rel), rel.clone());
        texts.push((rel, text));
    }
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (rel, text) in &texts {
        let module = module_path(rel);
        let set = edges.entry(rel.clone()).or_default();
        for path in references(&code_only(text), &module) {
            // the longest prefix that is a file of the crate
            if let Some(target) = (1..=path.len()).rev().find_map(|n| files.get(&path[..n])) {
                if target != rel {
                    set.insert(target.clone());
                }
            }
        }
    }
    Crate { files, edges }
}

fn top(rel: &Path) -> String {
    module_path(rel).into_iter().next().unwrap_or_default()
}

#[test]
fn no_module_imports_a_higher_layer() {
    let c = scan();
    assert!(c.files.len() > 50, "scanned only {} files", c.files.len());
    let mut bad = Vec::new();
    for (from, tos) in &c.edges {
        let (ft, lf) = (top(from), layer_of(&top(from)));
        if from == Path::new("lib.rs") {
            continue;
        }
        let Some(lf) = lf else {
            bad.push(format!(
                "{}: top-level module `{ft}` has no layer",
                from.display()
            ));
            continue;
        };
        for to in tos {
            let tt = top(to);
            if tt.is_empty() || tt == ft {
                continue;
            }
            match layer_of(&tt) {
                Some(lt) if lt < lf => {}
                _ => bad.push(format!(
                    "{} ({ft}) imports {} ({tt}): not a lower layer",
                    from.display(),
                    to.display()
                )),
            }
        }
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

/// Strongly connected components (Tarjan) of the file graph without `mod.rs` / `lib.rs`
/// nodes: a parent declaring its children is structure, two leaves using each other a cycle.
#[test]
fn no_import_cycles_between_files() {
    let c = scan();
    let leaf = |p: &PathBuf| !p.ends_with("mod.rs") && !p.ends_with("lib.rs");
    let nodes: Vec<&PathBuf> = c.edges.keys().filter(|p| leaf(p)).collect();
    let index: BTreeMap<&PathBuf, usize> = nodes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|p| {
            c.edges[*p]
                .iter()
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    struct T<'a> {
        adj: &'a [Vec<usize>],
        idx: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T<'_>, v: usize) {
        t.idx[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &t.adj[v].clone() {
            match t.idx[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                _ => {}
            }
        }
        if Some(t.low[v]) == t.idx[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            t.sccs.push(scc);
        }
    }
    let n = nodes.len();
    let mut t = T {
        adj: &adj,
        idx: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if t.idx[v].is_none() {
            visit(&mut t, v);
        }
    }
    let cycles: Vec<String> = t
        .sccs
        .iter()
        .filter(|s| s.len() > 1)
        .map(|s| {
            s.iter()
                .map(|&i| nodes[i].display().to_string())
                .collect::<Vec<_>>()
                .join(" ↔ ")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "files importing each other:\n{}",
        cycles.join("\n")
    );
}

/// The scanner itself: a grouped `use`, `super` chains, and text in strings and comments.
#[test]
fn the_scanner_resolves_paths() {
    let m = vec![
        "backend".to_string(),
        "cuda".to_string(),
        "graph".to_string(),
    ];
    let code = code_only(
        "use super::runtime::{Gpu, x::Y};\nuse crate::{error::Error, quant};\n// crate::cli\nlet s = \"crate::server\";\nlet q = '\"'; super::super::cpu::f();",
    );
    let refs = references(&code, &m);
    let s: BTreeSet<String> = refs.iter().map(|p| p.join("::")).collect();
    for want in [
        "backend::cuda::runtime::Gpu",
        "backend::cuda::runtime::x::Y",
        "error::Error",
        "quant",
        "backend::cpu::f",
    ] {
        assert!(s.contains(want), "{want} not in {s:?}");
    }
    assert!(
        !s.iter()
            .any(|p| p.starts_with("cli") || p.starts_with("server")),
        "{s:?}"
    );
}
