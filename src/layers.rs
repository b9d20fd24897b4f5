//! The crate's layers: the top-level modules and which of them use which,
//! read from the `crate::` paths in `src/`, must form no circle. A part
//! lower down (ids, the plugin host, the broker, telemetry, the fleet)
//! never reaches up to one that builds on it (the command engine, edge
//! nodes, the scenario file, the HTTP API); where two parts must meet, a
//! small trait in the lower one is implemented where both are known
//! (`app.rs`). The test fails naming the circle and where each of its
//! arrows is written, so a circle cannot come back unnoticed.
//!
//! The reader is a small scanner, not a Rust parser: it skips comments,
//! string and character literals, and takes the first segment after each
//! `crate::` (each item's first segment in a `crate::{...}` group).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// For each module, the modules it uses and the first place it does.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The first path segment after each `crate::` in Rust source, with the
/// line it is on. Comments and literals are skipped.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let code = blank_comments_and_literals(source);
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::").map(|i| i + at) {
        at = i + "crate::".len();
        let starts_word = i == 0 || !is_ident(bytes[i - 1]);
        if !starts_word {
            continue;
        }
        let line = code[..i].matches('\n').count() + 1;
        let rest = code[at..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            for name in group_heads(group) {
                found.push((line, name));
            }
        } else if let Some(name) = ident(rest) {
            found.push((line, name.to_string()));
        }
    }
    found
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn ident(s: &str) -> Option<&str> {
    let end = s.bytes().position(|b| !is_ident(b)).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The first segment of each item of a `{...}` group (the text after its
/// opening brace), nested groups skipped.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    let mut i = 0;
    let bytes = group.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' if depth == 0 => break,
            b'}' => depth -= 1,
            b',' if depth == 0 => item_start = true,
            b if b.is_ascii_whitespace() => {}
            _ if item_start && depth == 0 => {
                item_start = false;
                if let Some(name) = ident(&group[i..]) {
                    heads.push(name.to_string());
                    i += name.len();
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    heads
}

/// The source with comments, string literals and character literals
/// replaced by spaces (newlines kept, so line numbers stay right).
fn blank_comments_and_literals(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        if b[i] == b'/' && next == Some(b'/') {
            let end = source[i..].find('\n').map_or(b.len(), |e| i + e);
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'/' && next == Some(b'*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 1;
                } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if b[i] == b'r'
            && matches!(next, Some(b'"' | b'#'))
            && (i == 0
                || !is_ident(b[i - 1])
                || (b[i - 1] == b'b' && (i < 2 || !is_ident(b[i - 2]))))
        {
            // A raw string: r"..." or r#"..."# (or br"..."), closed by
            // the same number of hashes.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let open = i + 1 + hashes;
            if b.get(open) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let end = source[open + 1..]
                .find(&close)
                .map_or(b.len(), |e| open + 1 + e + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\u{..}', 'é'), or else a
            // lifetime or label, which is code.
            let end = if next == Some(b'\\') {
                source[i + 3..].find('\'').map(|e| i + 3 + e + 1)
            } else {
                source[i + 1..]
                    .chars()
                    .next()
                    .map(|c| i + 1 + c.len_utf8())
                    .filter(|&e| b.get(e) == Some(&b'\''))
                    .map(|e| e + 1)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced, by ASCII")
}

/// The graph of `modules` from sources given as (module, file, text).
fn module_graph(modules: &BTreeSet<String>, sources: &[(String, String, String)]) -> Graph {
    let mut graph = Graph::new();
    for (module, file, text) in sources {
        let uses = graph.entry(module.clone()).or_default();
        for (line, used) in crate_paths(text) {
            if used != *module && modules.contains(&used) {
                uses.entry(used).or_insert_with(|| format!("{file}:{line}"));
            }
        }
    }
    graph
}

/// A circle in the graph, as the modules along it (first one repeated at
/// the end), or None.
fn find_circle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'g>(
        graph: &'g Graph,
        at: &'g str,
        marks: &mut BTreeMap<&'g str, Mark>,
        path: &mut Vec<&'g str>,
    ) -> Option<Vec<String>> {
        marks.insert(at, Mark::Open);
        path.push(at);
        for next in graph.get(at).into_iter().flat_map(|uses| uses.keys()) {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = path.iter().position(|m| *m == next).expect("on the path");
                    let mut circle: Vec<String> =
                        path[from..].iter().map(|m| m.to_string()).collect();
                    circle.push(next.clone());
                    return Some(circle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(circle) = visit(graph, next, marks, path) {
                        return Some(circle);
                    }
                }
            }
        }
        path.pop();
        marks.insert(at, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for start in graph.keys() {
        if !marks.contains_key(start.as_str())
            && let Some(circle) = visit(graph, start, &mut marks, &mut Vec::new())
        {
            return Some(circle);
        }
    }
    None
}

/// The circle spelled out with where each arrow is written.
fn describe(graph: &Graph, circle: &[String]) -> String {
    let mut text = format!("import circle: {}", circle.join(" -> "));
    for pair in circle.windows(2) {
        let place = &graph[&pair[0]][&pair[1]];
        text.push_str(&format!(
            "\n  {} -> {}: {place} uses crate::{}",
            pair[0], pair[1], pair[1]
        ));
    }
    text
}

/// The library's top-level modules and the text of every file in them.
/// `main.rs` and `bin/` are not the library; `lib.rs` is the root.
fn library_sources(src: &Path) -> (BTreeSet<String>, Vec<(String, String, String)>) {
    let mut modules = BTreeSet::new();
    let mut sources = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .expect("src/ is readable")
        .map(|e| e.expect("src/ entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "bin" || name == "main.rs" || name == "lib.rs" {
            continue;
        }
        let module = if path.is_dir() {
            name.clone()
        } else if let Some(stem) = name.strip_suffix(".rs") {
            stem.to_string()
        } else {
            continue;
        };
        modules.insert(module.clone());
        let mut stack = vec![path];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("module folder is readable") {
                    stack.push(entry.expect("module folder entry").path());
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source file is readable");
                let shown = path.strip_prefix(src.parent().unwrap()).unwrap_or(&path);
                sources.push((module.clone(), shown.display().to_string(), text));
            }
        }
    }
    (modules, sources)
}

#[test]
fn the_library_modules_import_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, sources) = library_sources(&src);
    let graph = module_graph(&modules, &sources);
    // The reader found the modules and their imports at all.
    assert!(
        modules.contains("fleet") && modules.contains("app"),
        "{modules:?}"
    );
    assert!(graph["app"].contains_key("fleet"), "{graph:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "{}\nA lower module must not use one that builds on it: move the shared type down, or put a trait in the lower module and implement it where both are known (app.rs).",
            describe(&graph, &circle)
        );
    }
}

#[test]
fn a_circle_is_found_and_named_with_its_places() {
    let source = |module: &str, text: &str| {
        (
            module.to_string(),
            format!("src/{module}.rs"),
            text.to_string(),
        )
    };
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|m| m.to_string()).collect();
    let sources = [
        source("a", "use crate::b::Thing;\n"),
        source("b", "fn f() {}\nuse crate::{c::{X, Y}, a as _};\n"),
        source("c", "// use crate::a;\n"),
    ];
    let graph = module_graph(&modules, &sources);
    let circle = find_circle(&graph).expect("a uses b, b uses a");
    assert_eq!(circle, ["a", "b", "a"]);
    assert_eq!(
        describe(&graph, &circle),
        "import circle: a -> b -> a\n  a -> b: src/a.rs:1 uses crate::b\n  b -> a: src/b.rs:2 uses crate::a"
    );
    let sources = [source("a", "use crate::b::Thing;\n"), source("b", "")];
    assert_eq!(find_circle(&module_graph(&modules, &sources)), None);
}

#[test]
fn paths_in_comments_and_literals_are_not_read() {
    let text = r##"
        /// [`crate::doc`] links are not imports
        /* crate::block /* nested crate::deeper */ still a comment crate::x */
        let s = "crate::string \" crate::escaped";
        let r = r#"crate::raw "quoted" crate::raw2"#;
        let c = '"'; let q = '\''; let e = '\u{e9}'; fn f<'a>(x: &'a str) {}
        let used = crate::real::thing();
        my_crate::not_ours();
        use crate::{first::A, second::{B, C}, third};
    "##;
    let names: Vec<String> = crate_paths(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["real", "first", "second", "third"]);
    assert_eq!(crate_paths(text)[0].0, 7);
}
