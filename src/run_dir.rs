//! The one rule for output directories of `p3o train`, `sft`,
//! `reward-model train` and `demo`: a new run needs a directory that does
//! not exist or is empty; anything else holds a run and is never written
//! over. Whole directories (`final/`) are written under a temporary name and
//! renamed into place, so no reader ever sees one half-written.

use std::path::{Path, PathBuf};

/// What an output directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Nothing is there.
    Absent,
    /// An empty directory.
    Empty,
    /// A directory with these entries (sorted, directories with a `/`).
    Run(Vec<String>),
}

/// Looks at `dir`; a path that is not a directory, or one that cannot be
/// read, is an error naming it.
pub fn contents(dir: &Path) -> Result<Contents, String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::Absent),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() && !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) => {
            return Err(format!(
                "{}: exists and is not a directory; choose another --out",
                dir.display()
            ));
        }
        Ok(_) => {}
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() { name + "/" } else { name }
        })
        .collect();
    names.sort();
    Ok(if names.is_empty() {
        Contents::Empty
    } else {
        Contents::Run(names)
    })
}

/// `dir` can take a new run: it is absent or empty. Otherwise the error
/// names what it holds and `hint` says what to do.
pub fn require_fresh(dir: &Path, hint: &str) -> Result<Contents, String> {
    match contents(dir)? {
        Contents::Run(names) => Err(format!(
            "{} is not empty (it holds {}); {hint}",
            dir.display(),
            shortlist(&names)
        )),
        fresh => Ok(fresh),
    }
}

fn shortlist(names: &[String]) -> String {
    let mut s = names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 4 {
        s.push_str(&format!(" and {} more", names.len() - 4));
    }
    s
}

/// The steps of the complete checkpoints under `dir/checkpoints` (those
/// with a `state.json`; a temporary `.step-N.tmp` is not one), ascending.
pub fn checkpoint_steps(dir: &Path) -> Vec<usize> {
    let root = dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return vec![];
    };
    let mut steps: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .filter(|n| root.join(format!("step-{n}")).join("state.json").is_file())
        .collect();
    steps.sort_unstable();
    steps
}

/// The names a `p3o train` run directory holds besides `final/`: what a
/// run killed before its first complete checkpoint leaves.
const RUN_FILES: [&str; 5] = [
    "metrics.jsonl",
    "checkpoints/",
    ".metrics.jsonl.tmp",
    ".final.tmp/",
    ".final.old/",
];

/// Whether `names` (from [`Contents::Run`]) are only what a training run
/// writes before `final/`: a run that can start again from step 0 without
/// losing anything (no checkpoint, no final model, no file of anyone
/// else's).
pub fn only_early_run_files(names: &[String]) -> bool {
    names.iter().all(|n| RUN_FILES.contains(&n.as_str()))
}

/// Whether a failed command's `dir` holds nothing worth keeping: no
/// complete checkpoint, no `final/`, no report, and no metrics line. Such a
/// directory may be removed so that the same `--out` can be used again.
pub fn holds_nothing_of_value(dir: &Path) -> bool {
    let metrics_empty =
        std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(true, |t| t.trim().is_empty());
    checkpoint_steps(dir).is_empty()
        && !dir.join("final").exists()
        && !dir.join("report.md").exists()
        && !dir.join("results.json").exists()
        && metrics_empty
}

/// After a failed command: when `dir` holds nothing of value
/// ([`holds_nothing_of_value`]), removes it (or, if it `existed` before the
/// command, empty, only what is in it) and returns true; otherwise leaves
/// it as it is.
pub fn clear_if_nothing_of_value(dir: &Path, existed: bool) -> bool {
    if !dir.is_dir() || !holds_nothing_of_value(dir) {
        return false;
    }
    if existed {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
    true
}

/// An I/O error with the path it concerns in its message (the OS's own
/// says only what went wrong, "No space left on device", not where).
pub fn io_at(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Makes `out` and a new, empty `out/metrics.jsonl`; returns its path and
/// the open file. Errors name the path.
pub fn create_metrics(out: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(out).map_err(io_at(out))?;
    let path = out.join("metrics.jsonl");
    let file = std::fs::File::create(&path).map_err(io_at(&path))?;
    Ok((path, file))
}

/// Writes the directory `dest` whole: `fill` writes into a fresh temporary
/// sibling, which then takes `dest`'s place (an old `dest` is moved aside
/// first and removed last, so a kill at any moment leaves either the old
/// directory, or the new one, or both under their own names).
pub fn replace_dir<E: From<std::io::Error>>(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = dest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&parent).map_err(io_at(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
    fill(&tmp)?;
    if dest.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dest, &old).map_err(io_at(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(io_at(dest))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_for_an_existing_run() {
        let root = std::env::temp_dir().join(format!("p3o-run-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(contents(&root).unwrap(), Contents::Absent);
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(require_fresh(&root, "x").unwrap(), Contents::Empty);
        assert!(holds_nothing_of_value(&root));
        std::fs::write(root.join("metrics.jsonl"), "").unwrap();
        let e = require_fresh(&root, "choose another").unwrap_err();
        assert!(
            e.contains("metrics.jsonl") && e.contains("choose another"),
            "{e}"
        );
        assert!(holds_nothing_of_value(&root));
        std::fs::create_dir_all(root.join("checkpoints/step-2")).unwrap();
        assert!(checkpoint_steps(&root).is_empty());
        std::fs::write(root.join("checkpoints/step-2/state.json"), "{}").unwrap();
        assert_eq!(checkpoint_steps(&root), vec![2]);
        assert!(!holds_nothing_of_value(&root));
        let file = root.join("metrics.jsonl");
        assert!(contents(&file).unwrap_err().contains("not a directory"));

        // What a failed command made is cleared only while it holds nothing
        // of value.
        assert!(!clear_if_nothing_of_value(&root, false));
        let half = root.join("half");
        std::fs::create_dir_all(half.join("checkpoints/.step-2.tmp")).unwrap();
        std::fs::write(half.join("metrics.jsonl"), "\n").unwrap();
        assert!(clear_if_nothing_of_value(&half, true));
        assert!(half.is_dir() && std::fs::read_dir(&half).unwrap().next().is_none());
        std::fs::write(half.join("metrics.jsonl"), "").unwrap();
        assert!(clear_if_nothing_of_value(&half, false));
        assert!(!half.exists());
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
        assert!(!clear_if_nothing_of_value(&half, false) && half.join("metrics.jsonl").exists());
        std::fs::remove_dir_all(&half).unwrap();

        let dest = root.join("final");
        replace_dir::<std::io::Error>(&dest, |d| std::fs::write(d.join("a"), "1")).unwrap();
        replace_dir::<std::io::Error>(&dest, |d| std::fs::write(d.join("b"), "2")).unwrap();
        assert!(!dest.join("a").exists() && dest.join("b").exists());
        assert!(!root.join(".final.tmp").exists() && !root.join(".final.old").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
