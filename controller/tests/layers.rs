//! The controller's modules form layers, each importing only from its own or lower ones, so the
//! pure parts (model, validation, index, translation) never depend on the parts that do I/O and
//! no import circle can form. This reads every `crate::` path in `src/` outside test code and
//! checks it against the order below; a new top-level module must be placed in it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. ARCHITECTURE.md ("The controller's modules") says what each layer is.
const LAYERS: &[&str] = &[
    "model",
    "crd",
    "validation",
    "mesh_config",
    "loader",
    "index",
    "jwks",
    "translate",
    "analysis",
    "push",
    "ca",
    "tls",
    "syncz",
    "monitoring",
    "console",
    "source",
    "webhook",
    "server",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and without items marked `#[cfg(test)]` (a `mod tests;` line or
/// a braced block).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("#[cfg(test)]") {
            // Skip the item the attribute marks, from the rest of this line on.
            let mut depth = 0i32;
            let mut item = Some(rest);
            while let Some(part) = item {
                let part = part.trim_end();
                depth += part.matches('{').count() as i32 - part.matches('}').count() as i32;
                if depth <= 0 && (part.ends_with(';') || part.ends_with('}')) {
                    break;
                }
                item = lines.next();
            }
            continue;
        }
        let code = line.split(" //").next().unwrap_or(line);
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The top-level modules a piece of code names through `crate::`, grouped imports included
/// (`use crate::{index::X, model::{..}}`).
fn crate_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

#[test]
fn imports_only_run_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(module) = line
            .trim()
            .strip_prefix("pub mod ")
            .or_else(|| line.trim().strip_prefix("mod "))
        {
            let module = module.trim_end_matches(';');
            assert!(
                rank(module).is_some(),
                "module {module} has no place in LAYERS (controller/tests/layers.rs)"
            );
        }
    }

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let is_test = relative.file_name().is_some_and(|n| n == "tests.rs")
            || relative.components().any(|c| c.as_os_str() == "tests");
        if top == "lib" || top == "main" || is_test {
            continue;
        }
        let own = rank(&top).unwrap_or_else(|| panic!("{top} has no place in LAYERS"));
        let code = production_code(&std::fs::read_to_string(&file).unwrap());
        for used in crate_modules(&code) {
            checked += 1;
            match rank(&used) {
                Some(r) if r <= own => {}
                _ => violations.push(format!("{} -> crate::{used}", relative.display())),
            }
        }
    }
    // The check reads something: the translation alone imports the index and the model.
    assert!(checked > 50, "only {checked} imports found");
    assert!(
        violations.is_empty(),
        "imports from a higher layer:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_reader_finds_grouped_imports_and_skips_tests_and_comments() {
    let code = production_code(
        "use crate::{\n    index::X,\n    model::{a, b::{c}},\n    validation::{self, W},\n};\n\
         // use crate::server;\n\
         use crate::source::kube::Sink; // crate::webhook\n\
         #[cfg(test)]\nmod tests {\n    use crate::ca;\n}\n\
         #[cfg(test)]\nmod more;\n\
         #[cfg(test)] use crate::server;\n\
         fn f() { crate::push::go() }\n",
    );
    let found: Vec<String> = crate_modules(&code).into_iter().collect();
    assert_eq!(found, ["index", "model", "push", "source", "validation"]);
}
