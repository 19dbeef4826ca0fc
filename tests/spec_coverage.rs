//! Every clause of spec/p3o.md is cited by at least one test, and every
//! citation names a clause that exists.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// IDs declared in the spec: headings of the form `### [C-...] Title`.
fn clauses() -> BTreeSet<String> {
    let spec =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("spec/p3o.md")).unwrap();
    spec.lines()
        .filter_map(|l| l.strip_prefix("### ["))
        .filter_map(|l| l.split_once(']').map(|(id, _)| id.to_string()))
        .collect()
}

/// IDs cited by comment lines that start with `// spec:` in the test files.
fn citations() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = vec![dir];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in fs::read_to_string(&path).unwrap().lines() {
                if let Some(ids) = line.trim_start().strip_prefix("// spec:") {
                    out.extend(ids.split_whitespace().map(str::to_string));
                }
            }
        }
    }
    out
}

// spec: C-NOTATION
#[test]
fn every_clause_is_cited_and_every_citation_exists() {
    let clauses = clauses();
    let cited = citations();
    assert!(clauses.len() >= 20, "spec parse found only {clauses:?}");
    let uncited: Vec<_> = clauses.difference(&cited).collect();
    let unknown: Vec<_> = cited.difference(&clauses).collect();
    assert!(uncited.is_empty(), "clauses cited by no test: {uncited:?}");
    assert!(
        unknown.is_empty(),
        "tests cite clauses that do not exist: {unknown:?}"
    );
}
