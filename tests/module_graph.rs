//! No import circle in `src/`: the files of the library (from `src/lib.rs`)
//! and of the binary (from `src/main.rs`) form a graph with an edge from a
//! file to every file whose items it names (`use` trees, paths in code and
//! in macro arguments, re-exports followed to the file that defines the
//! item), and that graph has no cycle. A module's declarations of its
//! children (`mod x;`) are not edges, so a folder's `mod.rs` may hold the
//! type its children implement, as long as it names nothing of theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module by its path from its crate's root (`["train", "trainer"]`).
type ModPath = Vec<String>;

/// The names a file's `use` items bind: name -> (in the library, seen from
/// the binary; absolute path).
type Aliases = BTreeMap<String, (bool, Vec<String>)>;

/// One crate's module tree: which file each module lives in, the children
/// of each module, and each file's syntax.
struct Crate {
    /// The file of every module (inline modules map to their file).
    file_of: BTreeMap<ModPath, PathBuf>,
    /// The module path of every file.
    module_of: BTreeMap<PathBuf, ModPath>,
    children: BTreeMap<ModPath, BTreeSet<String>>,
    /// Names bound by `use` (re-exports among them): (module, name) -> the
    /// path as written there.
    reexports: BTreeMap<(ModPath, String), Vec<String>>,
    syntax: BTreeMap<PathBuf, syn::File>,
}

/// Where the sources come from: the disk, or (for the checker's own test)
/// a map of file names to texts.
trait Sources {
    fn read(&self, path: &Path) -> Option<String>;
}

struct Disk;

impl Sources for Disk {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

impl Sources for BTreeMap<PathBuf, String> {
    fn read(&self, path: &Path) -> Option<String> {
        self.get(path).cloned()
    }
}

/// The folder that holds the files of the children of `file`'s module.
fn child_dir(file: &Path) -> PathBuf {
    let stem = file.file_stem().unwrap().to_string_lossy();
    let parent = file.parent().unwrap().to_path_buf();
    if ["mod", "lib", "main"].contains(&stem.as_ref()) {
        parent
    } else {
        parent.join(stem.as_ref())
    }
}

impl Crate {
    fn load(root: &Path, sources: &dyn Sources) -> Crate {
        let mut c = Crate {
            file_of: BTreeMap::new(),
            module_of: BTreeMap::new(),
            children: BTreeMap::new(),
            reexports: BTreeMap::new(),
            syntax: BTreeMap::new(),
        };
        let mut todo = vec![(root.to_path_buf(), Vec::new())];
        while let Some((file, path)) = todo.pop() {
            let text = sources
                .read(&file)
                .unwrap_or_else(|| panic!("{}: cannot read", file.display()));
            let ast = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{}: does not parse: {e}", file.display()));
            c.file_of.insert(path.clone(), file.clone());
            c.module_of.insert(file.clone(), path.clone());
            c.scan_items(
                &ast.items,
                &path,
                &file,
                &child_dir(&file),
                sources,
                &mut todo,
            );
            c.syntax.insert(file, ast);
        }
        c
    }

    /// Records the modules and re-exports of `items` (module `path`, in
    /// `file`), queueing the files of out-of-line child modules.
    fn scan_items(
        &mut self,
        items: &[syn::Item],
        path: &ModPath,
        file: &Path,
        dir: &Path,
        sources: &dyn Sources,
        todo: &mut Vec<(PathBuf, ModPath)>,
    ) {
        for item in items {
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let mut child = path.clone();
                    child.push(name.clone());
                    self.children
                        .entry(path.clone())
                        .or_default()
                        .insert(name.clone());
                    match &m.content {
                        Some((_, inner)) => {
                            self.file_of.insert(child.clone(), file.to_path_buf());
                            self.scan_items(inner, &child, file, &dir.join(&name), sources, todo);
                        }
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            let nested = dir.join(&name).join("mod.rs");
                            let found = if sources.read(&flat).is_some() {
                                flat
                            } else {
                                nested
                            };
                            todo.push((found, child));
                        }
                    }
                }
                // Any `use` binds a name that the module's descendants (and,
                // when public, everyone) may reach the item by.
                syn::Item::Use(u) => {
                    let mut leaves = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut leaves);
                    for (segments, alias) in leaves.into_iter().filter(|(_, a)| a != "*") {
                        self.reexports.insert((path.clone(), alias), segments);
                    }
                }
                _ => {}
            }
        }
    }

    fn is_module(&self, path: &ModPath) -> bool {
        self.file_of.contains_key(path)
    }

    /// The absolute form of `segments` as written in module `at`: `crate`,
    /// `self` and `super` resolved, a leading child module or alias made
    /// absolute; `None` for a path into another crate.
    fn absolute(
        &self,
        segments: &[String],
        at: &ModPath,
        aliases: &Aliases,
        lib: Option<&Crate>,
    ) -> Option<(bool, Vec<String>)> {
        let first = segments.first()?;
        let mut out: Vec<String>;
        let mut rest = &segments[1..];
        match first.as_str() {
            "crate" => out = Vec::new(),
            "self" => out = at.clone(),
            "super" => {
                out = at.clone();
                out.pop();
                while rest.first().is_some_and(|s| s == "super") {
                    out.pop();
                    rest = &rest[1..];
                }
            }
            "p3o" if lib.is_some() => return Some((true, rest.to_vec())),
            name => {
                let mut child = at.clone();
                child.push(name.to_string());
                if self.is_module(&child) {
                    out = child;
                } else if let Some((in_lib, target)) = aliases.get(name) {
                    let mut full = target.clone();
                    full.extend(rest.iter().cloned());
                    return Some((*in_lib, full));
                } else {
                    return None;
                }
            }
        }
        out.extend(rest.iter().cloned());
        Some((false, out))
    }

    /// The file that defines what the absolute path `segments` names: the
    /// deepest module on it, then through that module's re-exports.
    fn file_defining(&self, segments: &[String], depth: usize) -> Option<PathBuf> {
        let mut module: ModPath = Vec::new();
        let mut i = 0;
        while i < segments.len() {
            let mut next = module.clone();
            next.push(segments[i].clone());
            if !self.is_module(&next) {
                break;
            }
            module = next;
            i += 1;
        }
        // A name the module binds by `use` leads to where it is defined (a
        // name from another crate leaves the edge at the module).
        if i < segments.len()
            && depth < 16
            && let Some(target) = self.reexports.get(&(module.clone(), segments[i].clone()))
            && let Some((_, mut full)) = self.absolute(target, &module, &Aliases::new(), None)
        {
            full.extend(segments[i + 1..].iter().cloned());
            if let Some(f) = self.file_defining(&full, depth + 1) {
                return Some(f);
            }
        }
        self.file_of.get(&module).cloned()
    }
}

/// The leaves of a `use` tree: each full path with the name it binds.
fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                let last = prefix.last().cloned().unwrap_or_default();
                out.push((prefix.clone(), last));
            } else {
                let mut full = prefix.clone();
                full.push(name.clone());
                out.push((full, name));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.push((full, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), "*".into())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// Every path a file names, with the module it is written in.
#[derive(Default)]
struct Names {
    at: Vec<ModPath>,
    uses: Vec<(ModPath, Vec<String>, String)>,
    paths: Vec<(ModPath, Vec<String>)>,
}

impl<'a> Visit<'a> for Names {
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        let mut inner = self.at.last().cloned().unwrap_or_default();
        inner.push(m.ident.to_string());
        self.at.push(inner);
        syn::visit::visit_item_mod(self, m);
        self.at.pop();
    }

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        let mut leaves = Vec::new();
        flatten_use(&u.tree, &mut Vec::new(), &mut leaves);
        let at = self.at.last().cloned().unwrap_or_default();
        for (path, alias) in leaves {
            self.uses.push((at.clone(), path, alias));
        }
    }

    fn visit_path(&mut self, p: &'a syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            let at = self.at.last().cloned().unwrap_or_default();
            self.paths.push((at, segments));
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'a syn::Macro) {
        let at = self.at.last().cloned().unwrap_or_default();
        macro_paths(m.tokens.clone(), &mut |segments| {
            self.paths.push((at.clone(), segments));
        });
        syn::visit::visit_macro(self, m);
    }
}

/// Paths `a::b::c` inside a macro's tokens (which syn does not parse).
fn macro_paths(tokens: TokenStream, found: &mut dyn FnMut(Vec<String>)) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(g) => macro_paths(g.stream(), found),
            TokenTree::Ident(id) => {
                let mut segments = vec![id.to_string()];
                let mut j = i + 1;
                while let (
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(next)),
                ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                {
                    if a.as_char() != ':' || b.as_char() != ':' {
                        break;
                    }
                    segments.push(next.to_string());
                    j += 3;
                }
                if segments.len() > 1 {
                    found(segments);
                }
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// The file-to-file edges of the binary (`bin`, optional) and the library.
fn edges(lib: &Crate, bin: Option<&Crate>) -> BTreeSet<(PathBuf, PathBuf)> {
    let mut out = BTreeSet::new();
    for (this, other) in [(Some(lib), None), (bin, Some(lib))] {
        let Some(this) = this else { continue };
        for (file, ast) in &this.syntax {
            let mut names = Names::default();
            names.at.push(this.module_of[file].clone());
            names.visit_file(ast);
            // The names bound by `use` in this file.
            let mut aliases = Aliases::new();
            let mut targets: Vec<(bool, Vec<String>)> = Vec::new();
            for (at, path, alias) in &names.uses {
                if let Some((in_lib, abs)) = this.absolute(path, at, &Aliases::new(), other) {
                    aliases.insert(alias.clone(), (in_lib, abs.clone()));
                    targets.push((in_lib, abs));
                }
            }
            for (at, path) in &names.paths {
                if let Some(t) = this.absolute(path, at, &aliases, other) {
                    targets.push(t);
                }
            }
            for (in_lib, abs) in targets {
                let owner = if in_lib { lib } else { this };
                if let Some(to) = owner.file_defining(&abs, 0)
                    && &to != file
                {
                    out.insert((file.clone(), to));
                }
            }
        }
    }
    out
}

/// A cycle of `edges`, if there is one.
fn find_cycle(edges: &BTreeSet<(PathBuf, PathBuf)>) -> Option<Vec<PathBuf>> {
    let mut next: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    // Depth-first search with colours: 1 on the stack, 2 finished.
    let mut colour: BTreeMap<&PathBuf, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a PathBuf,
        next: &BTreeMap<&'a PathBuf, Vec<&'a PathBuf>>,
        colour: &mut BTreeMap<&'a PathBuf, u8>,
        stack: &mut Vec<&'a PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        colour.insert(n, 1);
        stack.push(n);
        for &m in next.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            match colour.get(m) {
                Some(1) => {
                    let start = stack.iter().position(|x| *x == m).unwrap();
                    let mut cycle: Vec<PathBuf> =
                        stack[start..].iter().map(|p| (*p).clone()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, next, colour, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        colour.insert(n, 2);
        None
    }
    let nodes: Vec<&PathBuf> = next.keys().copied().collect();
    for n in nodes {
        if !colour.contains_key(n)
            && let Some(c) = visit(n, &next, &mut colour, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn show(cycle: &[PathBuf], root: &Path) -> String {
    cycle
        .iter()
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn src_has_no_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = Crate::load(&root.join("src/lib.rs"), &Disk);
    let bin = Crate::load(&root.join("src/main.rs"), &Disk);
    // Every file of src/ belongs to one of the two crates.
    let mut files = vec![root.join("src")];
    let mut stray = Vec::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.extension().is_some_and(|e| e == "rs")
            && !lib.module_of.contains_key(&p)
            && !bin.module_of.contains_key(&p)
        {
            stray.push(p);
        }
    }
    assert!(stray.is_empty(), "files in no module tree: {stray:?}");
    let e = edges(&lib, Some(&bin));
    if std::env::var_os("P3O_PRINT_EDGES").is_some() {
        for (a, b) in &e {
            println!(
                "{} -> {}",
                show(std::slice::from_ref(a), root),
                show(std::slice::from_ref(b), root)
            );
        }
    }
    assert!(
        e.len() > 100,
        "only {} edges found: the scan is broken",
        e.len()
    );
    if let Some(cycle) = find_cycle(&e) {
        panic!("an import circle in src/: {}", show(&cycle, root));
    }
}

/// The check has teeth: circles through a `use`, a path in code, a path in
/// a macro and a re-export are found; a parent's `mod` declarations and a
/// child's use of the parent are not a circle.
#[test]
fn import_circles_are_found() {
    let tree = |files: &[(&str, &str)]| -> BTreeMap<PathBuf, String> {
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect()
    };
    let cycle_of = |files: &[(&str, &str)]| {
        let sources = tree(files);
        let lib = Crate::load(Path::new("src/lib.rs"), &sources);
        find_cycle(&edges(&lib, None)).map(|c| show(&c, Path::new("src")))
    };
    let lib = "mod a; mod b; mod m;";
    assert_eq!(
        cycle_of(&[
            ("src/lib.rs", lib),
            ("src/a.rs", "use crate::b::B; pub struct A;"),
            ("src/b.rs", "pub struct B; fn f() { let _ = crate::a::A; }"),
            ("src/m/mod.rs", ""),
        ]),
        Some("a.rs -> b.rs -> a.rs".into())
    );
    assert!(
        cycle_of(&[
            ("src/lib.rs", lib),
            ("src/a.rs", "fn f() { println!(\"{:?}\", crate::b::B); }"),
            ("src/b.rs", "use super::a; fn g() { a::f(); }"),
            ("src/m/mod.rs", ""),
        ])
        .is_some()
    );
    // Through a re-export: m/mod.rs names x's item, x names m's own item.
    assert!(
        cycle_of(&[
            ("src/lib.rs", lib),
            ("src/a.rs", ""),
            ("src/b.rs", ""),
            (
                "src/m/mod.rs",
                "mod x; pub use x::X; pub struct M; fn f() -> X { X }"
            ),
            ("src/m/x.rs", "pub struct X(super::M);"),
        ])
        .is_some()
    );
    // A child using its parent's type, the parent re-exporting an error
    // type from a leaf: no circle.
    assert_eq!(
        cycle_of(&[
            ("src/lib.rs", lib),
            ("src/a.rs", "use crate::m::{M, Error};"),
            ("src/b.rs", ""),
            (
                "src/m/mod.rs",
                "mod error; mod x; pub use error::Error; pub struct M;"
            ),
            ("src/m/error.rs", "pub struct Error;"),
            (
                "src/m/x.rs",
                "use super::{M, Error}; impl M { fn f(&self) -> Error { Error } }"
            ),
        ]),
        None
    );
}
