//! Every clause of spec/p3o.md is covered by a test that asserts on it:
//! a `// spec: ID ...` comment in `tests/` cites the clauses for the test
//! function that follows it, and counts only when that function is a test
//! (`#[test]`, plain or inside `proptest!`) whose body asserts, directly or
//! through helpers of its file or of `tests/common` (`assert*!`,
//! `prop_assert*!`, the `approx` and `insta` assertions, `panic!`; not the
//! set-up helpers of [`SETUP`]). Every
//! citation must name a clause that exists and sit on such a test.
//!
//! `spec/COVERAGE.md` is the generated table of each clause with the tests
//! that cover it; this test fails when it is stale, and
//! `P3O_BLESS=1 cargo test --test spec_coverage` writes it anew.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// The macros that assert.
const ASSERTIONS: [&str; 14] = [
    "assert",
    "assert_eq",
    "assert_ne",
    "prop_assert",
    "prop_assert_eq",
    "prop_assert_ne",
    "assert_relative_eq",
    "assert_abs_diff_eq",
    "assert_ulps_eq",
    "assert_snapshot",
    "assert_json_snapshot",
    "assert_debug_snapshot",
    "assert_yaml_snapshot",
    "panic",
];

/// Helpers that set a test up and may panic doing so (no device, a
/// required GPU missing) without checking anything: calling them is not an
/// assertion.
const SETUP: [&str; 3] = ["gpu", "skip", "skip_without_gpu"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// IDs declared in the spec: headings of the form `### [C-...] Title`.
fn clauses() -> BTreeSet<String> {
    let spec = fs::read_to_string(root().join("spec/p3o.md")).unwrap();
    spec.lines()
        .filter_map(|l| l.strip_prefix("### ["))
        .filter_map(|l| l.split_once(']').map(|(id, _)| id.to_string()))
        .collect()
}

/// A function of a test file: where it starts, whether it is a test, the
/// assertion macros and the functions its body names.
struct Function {
    name: String,
    line: usize,
    is_test: bool,
    asserts: bool,
    calls: BTreeSet<String>,
}

/// Every function in `tokens` (nested groups included).
fn functions(tokens: TokenStream, out: &mut Vec<Function>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    // `#[test]` seen, and `#[ignore]` (an ignored test covers nothing).
    let (mut test_attr, mut ignored) = (false, false);
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Punct(p) if p.as_char() == '#' => {
                if let Some(TokenTree::Group(g)) = tokens.get(i + 1)
                    && g.delimiter() == Delimiter::Bracket
                {
                    let attr = g.stream().to_string();
                    test_attr |= attr == "test";
                    ignored |= attr == "ignore" || attr.starts_with("ignore ");
                    i += 2;
                    continue;
                }
            }
            TokenTree::Ident(id) if id == "fn" => {
                if let Some(TokenTree::Ident(name)) = tokens.get(i + 1) {
                    let body = tokens[i + 2..].iter().find_map(|t| match t {
                        TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                            Some(g.stream())
                        }
                        _ => None,
                    });
                    if let Some(body) = body {
                        let (asserts, calls) = scan_body(body.clone());
                        out.push(Function {
                            name: name.to_string(),
                            line: id.span().start().line,
                            is_test: test_attr && !ignored,
                            asserts,
                            calls,
                        });
                        functions(body, out);
                    }
                }
                (test_attr, ignored) = (false, false);
            }
            TokenTree::Ident(id)
                if ["pub", "async", "const", "unsafe", "extern"]
                    .contains(&id.to_string().as_str()) => {}
            TokenTree::Group(g) => {
                // `pub(crate)` keeps the attributes; any other group is an
                // item's body.
                if g.delimiter() != Delimiter::Parenthesis {
                    (test_attr, ignored) = (false, false);
                }
                functions(g.stream(), out);
            }
            _ => (test_attr, ignored) = (false, false),
        }
        i += 1;
    }
}

/// Whether `body` uses an assertion macro, and the names it calls.
fn scan_body(body: TokenStream) -> (bool, BTreeSet<String>) {
    let tokens: Vec<TokenTree> = body.into_iter().collect();
    let (mut asserts, mut calls) = (false, BTreeSet::new());
    for (i, t) in tokens.iter().enumerate() {
        match t {
            TokenTree::Ident(id) => match tokens.get(i + 1) {
                Some(TokenTree::Punct(p)) if p.as_char() == '!' => {
                    asserts |= ASSERTIONS.contains(&id.to_string().as_str());
                }
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => {
                    calls.insert(id.to_string());
                }
                // A call with a turbofish, `f::<T>(..)`.
                Some(TokenTree::Punct(p)) if p.as_char() == ':' => {
                    if let (Some(TokenTree::Punct(q)), Some(TokenTree::Punct(r))) =
                        (tokens.get(i + 2), tokens.get(i + 3))
                        && q.as_char() == ':'
                        && r.as_char() == '<'
                    {
                        calls.insert(id.to_string());
                    }
                }
                _ => {}
            },
            TokenTree::Group(g) => {
                let (a, c) = scan_body(g.stream());
                asserts |= a;
                calls.extend(c);
            }
            _ => {}
        }
    }
    (asserts, calls)
}

/// Whether `f` asserts, itself or through the functions it calls among
/// `helpers` (by name).
fn asserts(
    f: &Function,
    helpers: &BTreeMap<String, Vec<&Function>>,
    seen: &mut BTreeSet<String>,
) -> bool {
    if f.asserts {
        return true;
    }
    f.calls.iter().any(|c| {
        !SETUP.contains(&c.as_str())
            && seen.insert(c.clone())
            && helpers
                .get(c)
                .is_some_and(|fs| fs.iter().any(|g| asserts(g, helpers, seen)))
    })
}

/// One `// spec:` comment: the file, its line and the IDs it cites.
struct Citation {
    file: PathBuf,
    line: usize,
    ids: Vec<String>,
}

fn test_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root().join("tests")];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            todo.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The tests covering each clause (`file::function`), and every citation
/// that does not count, with why.
fn coverage() -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let files = test_files();
    let parsed: BTreeMap<&PathBuf, Vec<Function>> = files
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p).unwrap();
            let tokens = TokenStream::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: does not lex: {e}", p.display()));
            let mut fs = Vec::new();
            functions(tokens, &mut fs);
            (p, fs)
        })
        .collect();
    let common: Vec<&Function> = parsed
        .iter()
        .filter(|(p, _)| p.parent().is_some_and(|d| d.ends_with("common")))
        .flat_map(|(_, fs)| fs.iter())
        .collect();
    let mut covered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let citations: Vec<Citation> = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                l.trim_start().strip_prefix("// spec:").map(|ids| Citation {
                    file: file.clone(),
                    line: i + 1,
                    ids: ids.split_whitespace().map(str::to_string).collect(),
                })
            })
            .collect();
        let fns = &parsed[file];
        let mut helpers: BTreeMap<String, Vec<&Function>> = BTreeMap::new();
        for f in fns.iter().chain(common.iter().copied()) {
            helpers.entry(f.name.clone()).or_default().push(f);
        }
        let stem = file.file_stem().unwrap().to_string_lossy();
        for c in citations {
            let at = format!(
                "{}:{}",
                c.file.strip_prefix(root()).unwrap().display(),
                c.line
            );
            if c.ids.is_empty() {
                problems.push(format!("{at}: the citation names no clause"));
                continue;
            }
            let Some(f) = fns
                .iter()
                .filter(|f| f.line > c.line)
                .min_by_key(|f| f.line)
            else {
                problems.push(format!("{at}: no function follows the citation"));
                continue;
            };
            if !f.is_test {
                problems.push(format!("{at}: cites for `{}`, which is not a test", f.name));
            } else if !asserts(f, &helpers, &mut BTreeSet::new()) {
                problems.push(format!("{at}: test `{}` asserts nothing", f.name));
            } else {
                for id in c.ids {
                    covered
                        .entry(id)
                        .or_default()
                        .insert(format!("{stem}::{}", f.name));
                }
            }
        }
    }
    (covered, problems)
}

/// The table of `spec/COVERAGE.md`.
fn table(clauses: &BTreeSet<String>, covered: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut s = String::from(
        "# Which tests cover each clause of spec/p3o.md\n\n\
         Generated by `tests/spec_coverage.rs` from the `// spec:` citations of the\n\
         tests that assert (`P3O_BLESS=1 cargo test --test spec_coverage` rewrites it).\n\
         Tests of features `cuda` and `torch` are listed too; they run in\n\
         `scripts/test.sh`.\n\n| clause | tests |\n| --- | --- |\n",
    );
    for id in clauses {
        let tests: Vec<&str> = covered
            .get(id)
            .map(|t| t.iter().map(String::as_str).collect())
            .unwrap_or_default();
        s.push_str(&format!("| {id} | {} |\n", tests.join(", ")));
    }
    s
}

// spec: C-NOTATION
#[test]
fn every_clause_is_covered_and_every_citation_counts() {
    let clauses = clauses();
    assert!(clauses.len() >= 20, "spec parse found only {clauses:?}");
    let (covered, problems) = coverage();
    assert!(
        problems.is_empty(),
        "citations that do not count:\n{}",
        problems.join("\n")
    );
    let cited: BTreeSet<String> = covered.keys().cloned().collect();
    let uncovered: Vec<_> = clauses.difference(&cited).collect();
    let unknown: Vec<_> = cited.difference(&clauses).collect();
    assert!(
        uncovered.is_empty(),
        "clauses that no asserting test cites: {uncovered:?}"
    );
    assert!(
        unknown.is_empty(),
        "tests cite clauses that do not exist: {unknown:?}"
    );
    let path = root().join("spec/COVERAGE.md");
    let want = table(&clauses, &covered);
    if std::env::var_os("P3O_BLESS").is_some_and(|v| v == "1") {
        fs::write(&path, &want).unwrap();
    }
    let have = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "spec/COVERAGE.md is stale: run `P3O_BLESS=1 cargo test --test spec_coverage`"
    );
}

/// The rules have teeth: a citation on a helper, on a test that asserts
/// nothing, and on a test that asserts through a helper.
#[test]
fn citations_count_only_on_asserting_tests() {
    let src = r#"
        fn helper(x: u32) { assert!(x > 0); }
        fn quiet() {}
        fn gpu() -> Option<u32> { panic!("no device") }
        #[test]
        fn set_up_only() { let Some(_) = gpu() else { return }; }
        #[test]
        fn through_helper() { helper(3); }
        #[test]
        fn silent() { quiet(); }
        #[test]
        #[ignore]
        fn ignored() { assert!(true); }
        proptest! {
            #![proptest_config(c())]
            #[test]
            fn property(x in 0..3u32) { prop_assert!(x < 3); }
        }
    "#;
    let mut fs = Vec::new();
    functions(TokenStream::from_str(src).unwrap(), &mut fs);
    let mut helpers: BTreeMap<String, Vec<&Function>> = BTreeMap::new();
    for f in &fs {
        helpers.entry(f.name.clone()).or_default().push(f);
    }
    let by = |n: &str| fs.iter().find(|f| f.name == n).unwrap();
    assert!(!by("helper").is_test);
    assert!(
        by("through_helper").is_test
            && asserts(by("through_helper"), &helpers, &mut BTreeSet::new())
    );
    assert!(by("silent").is_test && !asserts(by("silent"), &helpers, &mut BTreeSet::new()));
    assert!(!asserts(by("set_up_only"), &helpers, &mut BTreeSet::new()));
    assert!(!by("ignored").is_test);
    assert!(by("property").is_test && by("property").asserts);
}
