//! The layout rules of docs/architecture.md that a reader cannot see from one file, checked on the
//! source text (parsed with `syn`, no build of the crates checked):
//! - one owner per concept: no other crate defines a `pub` type, trait, fn, const or static with
//!   the name of one csi-api exports ([`SAME_NAME_ALLOWED`] lists the deliberate ones);
//! - processes are spawned only in the agent's one runner, `csi-agent/src/lvm/runner.rs`, never
//!   elsewhere. Test code is not checked: `tests/`, `benches/`, `#[cfg(test)]` modules and
//!   `#[test]` functions (the nodevm harness is in `tests/`).
//!
//! An allow-list entry that matches nothing fails too, so the list only shrinks.
//! `cargo nextest run -p strata-tests --test structure`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Names another crate may define beside csi-api's (crate, name), and why.
const SAME_NAME_ALLOWED: &[(&str, &str, &str)] = &[(
    "csi-agent",
    "serve",
    "a module's entry point (csi::server::serve runs the gRPC server, kubernetes::serve the \
         mode); csi_api::http::serve is the HTTP server: one verb, three different things",
)];

/// The one module that spawns processes.
const RUNNER: &str = "csi-agent/src/lvm/runner.rs";

/// The crates whose code is checked against csi-api.
const OTHER_CRATES: &[&str] = &["csi-agent", "csi-controller", "csi-scheduler"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every `.rs` file under `dir` that is not test code, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let all = all_rust_files(dir);
    let tests = test_module_files(&all);
    all.into_iter()
        .filter(|p| !tests.iter().any(|t| p.starts_with(t)))
        .collect()
}

/// The files and folders of out-of-line modules declared `#[cfg(test)] mod name;` (e.g.
/// `discovery/tests.rs`), which hold only test code. Plain text: the attribute on the line
/// before the declaration, as rustfmt writes it.
fn test_module_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in files {
        let dir = path.parent().expect("a file has a folder");
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let base = if ["mod", "lib", "main"].contains(&stem) {
            dir.to_path_buf()
        } else {
            dir.join(stem)
        };
        let text = read(path);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            let name = pair[1]
                .strip_prefix("pub mod ")
                .or_else(|| pair[1].strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'));
            if let (Some(name), "#[cfg(test)]") = (name, pair[0]) {
                out.push(base.join(format!("{name}.rs")));
                out.push(base.join(name));
            }
        }
    }
    out
}

fn all_rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(path: &Path) -> syn::File {
    syn::parse_file(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Whether the attributes make the item test-only (`#[cfg(test)]`, `#[test]`, `#[tokio::test]`).
fn test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let path = attr.path();
        if path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        match &attr.meta {
            syn::Meta::List(list) if path.is_ident("cfg") => {
                let tokens = list.tokens.to_string();
                tokens == "test" || tokens.starts_with("all (test")
            }
            _ => false,
        }
    })
}

/// The names of the `pub` (or `pub(..)`) types, traits, fns, consts and statics a file defines
/// outside test code, with their kind; inline modules included.
fn public_items(file: &syn::File) -> Vec<(String, &'static str)> {
    fn walk(items: &[syn::Item], out: &mut Vec<(String, &'static str)>) {
        for item in items {
            let (vis, attrs, name, kind) = match item {
                syn::Item::Struct(i) => (&i.vis, &i.attrs, i.ident.to_string(), "struct"),
                syn::Item::Enum(i) => (&i.vis, &i.attrs, i.ident.to_string(), "enum"),
                syn::Item::Union(i) => (&i.vis, &i.attrs, i.ident.to_string(), "union"),
                syn::Item::Trait(i) => (&i.vis, &i.attrs, i.ident.to_string(), "trait"),
                syn::Item::Type(i) => (&i.vis, &i.attrs, i.ident.to_string(), "type"),
                syn::Item::Fn(i) => (&i.vis, &i.attrs, i.sig.ident.to_string(), "fn"),
                syn::Item::Const(i) => (&i.vis, &i.attrs, i.ident.to_string(), "const"),
                syn::Item::Static(i) => (&i.vis, &i.attrs, i.ident.to_string(), "static"),
                syn::Item::Mod(m) => {
                    if let (false, Some((_, inner))) = (test_only(&m.attrs), &m.content) {
                        walk(inner, out);
                    }
                    continue;
                }
                _ => continue,
            };
            if !matches!(vis, syn::Visibility::Inherited) && !test_only(attrs) {
                out.push((name, kind));
            }
        }
    }
    let mut out = Vec::new();
    walk(&file.items, &mut out);
    out
}

/// Where a file starts a process outside test code: the enclosing fn of each `Command::new`
/// (also inside macro calls such as `tokio::select!`).
fn spawns(file: &syn::File) -> Vec<String> {
    #[derive(Default)]
    struct Finder {
        fns: Vec<String>,
        found: Vec<String>,
    }
    fn is_command_new(path: &syn::Path) -> bool {
        let names: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        names.ends_with(&["Command".to_owned(), "new".to_owned()])
    }
    impl Finder {
        fn here(&self) -> String {
            self.fns
                .last()
                .cloned()
                .unwrap_or_else(|| "<item>".to_owned())
        }
    }
    impl<'ast> Visit<'ast> for Finder {
        fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
            if !test_only(&m.attrs) {
                syn::visit::visit_item_mod(self, m);
            }
        }
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            if test_only(&f.attrs) {
                return;
            }
            self.fns.push(f.sig.ident.to_string());
            syn::visit::visit_item_fn(self, f);
            self.fns.pop();
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            if test_only(&f.attrs) {
                return;
            }
            self.fns.push(f.sig.ident.to_string());
            syn::visit::visit_impl_item_fn(self, f);
            self.fns.pop();
        }
        fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
            if is_command_new(&p.path) {
                let here = self.here();
                self.found.push(here);
            }
            syn::visit::visit_expr_path(self, p);
        }
        fn visit_macro(&mut self, mac: &'ast syn::Macro) {
            let text = mac.tokens.to_string().replace(' ', "");
            if text.contains("Command::new") {
                let here = self.here();
                self.found.push(here);
            }
        }
    }
    let mut finder = Finder::default();
    finder.visit_file(file);
    finder.found
}

/// `name → kind` of everything csi-api exports (its library, not the crdgen binary).
fn csi_api_exports() -> BTreeMap<String, &'static str> {
    let src = repo().join("csi-api/src");
    rust_files(&src)
        .into_iter()
        .filter(|p| !p.starts_with(src.join("bin")))
        .flat_map(|p| public_items(&parse(&p)))
        .collect()
}

#[test]
fn no_crate_redefines_a_name_csi_api_exports() {
    let exports = csi_api_exports();
    assert!(
        exports.contains_key("VolumeLocks") && exports.contains_key("parse_duration"),
        "the scan of csi-api found too little: {exports:?}"
    );
    let mut found = BTreeSet::new();
    let mut problems = Vec::new();
    for krate in OTHER_CRATES {
        for path in rust_files(&repo().join(krate).join("src")) {
            for (name, kind) in public_items(&parse(&path)) {
                let Some(api_kind) = exports.get(&name) else {
                    continue;
                };
                if let Some((_, _, why)) = SAME_NAME_ALLOWED
                    .iter()
                    .find(|(k, n, _)| k == krate && *n == name)
                {
                    eprintln!("allowed: {krate} {kind} {name} ({why})");
                    found.insert((krate.to_string(), name));
                    continue;
                }
                problems.push(format!(
                    "{}: {kind} {name} has the name of csi-api's {api_kind} {name}: use csi-api's, \
                     rename it, or add it to SAME_NAME_ALLOWED with the reason",
                    relative(&path)
                ));
            }
        }
    }
    for (krate, name, _) in SAME_NAME_ALLOWED {
        if !found.contains(&(krate.to_string(), name.to_string())) {
            problems.push(format!(
                "SAME_NAME_ALLOWED lists {krate} {name}, which no longer exists: remove the entry"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn processes_are_spawned_only_by_the_runner() {
    let mut problems = Vec::new();
    for krate in ["csi-api", "csi-agent", "csi-controller", "csi-scheduler"] {
        for path in rust_files(&repo().join(krate).join("src")) {
            let rel = relative(&path);
            if !read(&path).contains("Command") {
                continue; // cheap: most files are never parsed
            }
            let places = spawns(&parse(&path));
            if places.is_empty() || rel == RUNNER {
                continue;
            }
            problems.push(format!(
                "{rel}: Command::new in {places:?}: run it through {RUNNER} (a `Tool`, an \
                 argument vector, LC_ALL=C, stderr kept)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The detectors themselves, on source text made to trip them.
mod detectors {
    use super::*;

    fn file(src: &str) -> syn::File {
        syn::parse_file(src).expect("test source parses")
    }

    #[test]
    fn public_items_include_nested_modules_and_leave_out_private_and_test_code() {
        let found = public_items(&file(
            r#"
            pub struct Shown;
            pub(crate) fn crate_visible() {}
            struct Private;
            fn private() {}
            pub const LIMIT: u32 = 1;
            pub mod inner { pub enum Nested {} pub trait Seam {} pub type Alias = u8; }
            #[cfg(test)]
            mod tests { pub struct OnlyInTests; }
            #[cfg(test)]
            pub fn test_helper() {}
            "#,
        ));
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Shown", "crate_visible", "LIMIT", "Nested", "Seam", "Alias"]
        );
        assert_eq!(found[0].1, "struct");
        assert_eq!(found[1].1, "fn");
    }

    #[test]
    fn spawns_are_found_in_any_spelling_and_inside_macros_but_not_in_tests() {
        let found = spawns(&file(
            r#"
            use std::process::Command;
            fn plain() { Command::new("blkid").output(); }
            struct Tool;
            impl Tool {
                async fn full_path(&self) { tokio::process::Command::new("fstrim").output().await; }
                async fn in_macro(&self) {
                    tokio::select! { out = Command::new("mkfs.xfs").output() => {}, }
                }
                fn no_spawn(&self) { let _ = Command::default_name(); }
            }
            #[cfg(test)]
            mod tests { fn helper() { std::process::Command::new("cp"); } }
            #[test]
            fn a_test() { std::process::Command::new("lvm"); }
            "#,
        ));
        assert_eq!(found, ["plain", "full_path", "in_macro"]);
        assert!(spawns(&file("fn f() { let c = Command::from(x); }")).is_empty());
    }
}
