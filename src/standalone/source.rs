//! Reading the rollouts directory: every `*.yaml` / `*.yml` file in it (not recursive,
//! hidden files skipped), each document checked by [`manifest::check`] as `sluice
//! validate` does. A file that cannot be read or checked is reported and changes nothing
//! else: the rollouts it held last time keep running on their last good spec.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::crd::{FeatureRolloutSpec, FlagTarget};
use crate::manifest;

/// One rollout found in the directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// `metadata.name`.
    pub name: String,
    /// The spec as written.
    pub spec: FeatureRolloutSpec,
    /// The YAML file it came from.
    pub file: PathBuf,
    /// The flagd document, resolved against the YAML file's directory.
    pub flag_path: PathBuf,
}

/// A problem with one file (or one document in it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileProblem {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, in a sentence naming the field.
    pub message: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// What one file held the last time it loaded without a problem.
#[derive(Clone, Debug, Default)]
struct FileState {
    text: Option<String>,
    good: Vec<Found>,
    problems: Vec<FileProblem>,
}

/// The rollouts directory and what was read from each file (only changed files are
/// checked again).
#[derive(Debug)]
pub struct Source {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

/// The result of one scan.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Rollouts by name: from files that loaded, and the last good spec of files that now
    /// fail.
    pub rollouts: BTreeMap<String, Found>,
    /// Every problem found, per file and document.
    pub problems: Vec<FileProblem>,
}

impl Source {
    /// A source over `dir`.
    pub fn new(dir: &Path) -> Self {
        Source {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Reads the directory again. An unreadable directory is one problem (and the
    /// rollouts already known stay).
    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(e) => {
                scan.problems.push(FileProblem {
                    file: self.dir.clone(),
                    message: format!("cannot read the rollouts directory: {e}"),
                });
                for state in self.files.values() {
                    for found in &state.good {
                        scan.rollouts.insert(found.name.clone(), found.clone());
                    }
                }
                return scan;
            }
        };
        let mut paths: Vec<PathBuf> = listing
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_manifest(p))
            .collect();
        paths.sort();
        self.files.retain(|path, _| paths.contains(path));
        let mut owner: HashMap<String, PathBuf> = HashMap::new();
        for path in paths {
            let state = self.files.entry(path.clone()).or_default();
            match std::fs::read_to_string(&path) {
                Ok(text) if state.text.as_deref() == Some(text.as_str()) => {}
                Ok(text) => {
                    let (found, problems) = load(&path, &text);
                    // A file with any problem keeps its last good rollouts: a half-edited
                    // file never releases a flag.
                    if problems.is_empty() {
                        state.good = found;
                    }
                    state.problems = problems;
                    state.text = Some(text);
                }
                Err(e) => {
                    state.text = None;
                    state.problems = vec![FileProblem {
                        file: path.clone(),
                        message: format!("cannot read: {e}"),
                    }];
                }
            }
            scan.problems.extend(state.problems.iter().cloned());
            for found in &state.good {
                match owner.get(&found.name) {
                    Some(first) => scan.problems.push(FileProblem {
                        file: path.clone(),
                        message: format!(
                            "metadata.name: {:?} is already the name of a rollout in {}; names must be unique in the directory (this one is ignored)",
                            found.name,
                            first.display()
                        ),
                    }),
                    None => {
                        owner.insert(found.name.clone(), path.clone());
                        scan.rollouts.insert(found.name.clone(), found.clone());
                    }
                }
            }
        }
        scan
    }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    yaml && !hidden && path.is_file()
}

/// Checks every document of one file. Returns the rollouts and the problems.
pub fn load(path: &Path, text: &str) -> (Vec<Found>, Vec<FileProblem>) {
    let problem = |message: String| FileProblem {
        file: path.to_path_buf(),
        message,
    };
    let documents = match manifest::documents(text) {
        Ok(documents) => documents,
        Err(p) => return (Vec::new(), vec![problem(p.to_string())]),
    };
    if documents.is_empty() {
        return (Vec::new(), vec![problem("holds no document".into())]);
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for (i, document) in documents.iter().enumerate() {
        let label = document
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("document {}", i + 1), str::to_owned);
        let rollout = match manifest::check(document) {
            Ok(rollout) => rollout,
            Err(list) => {
                let list: Vec<String> = list.iter().map(ToString::to_string).collect();
                problems.push(problem(format!("{label}: {}", list.join("; "))));
                continue;
            }
        };
        let Ok(FlagTarget::File { path: flag_file }) = rollout.spec.target.choice() else {
            problems.push(problem(format!(
                "{label}: spec.target: standalone mode writes only file targets; set spec.target.file.path"
            )));
            continue;
        };
        // `manifest::check` refused any name the API server would (a DNS-1123
        // subdomain is also a safe file name in the state directory).
        let name = rollout.metadata.name.clone().unwrap_or_default();
        let flag_path = base.join(&flag_file);
        found.push(Found {
            name,
            spec: rollout.spec,
            file: path.to_path_buf(),
            flag_path,
        });
    }
    (found, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(name: &str, path: &str, weight: u32) -> String {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: FeatureRollout\nmetadata: {{ name: {name} }}\nspec:\n  flag: {{ key: {name}, variants: {{ a: 1, b: 2 }}, baseline: a, candidate: b }}\n  target: {{ file: {{ path: {path} }} }}\n  stages:\n    - {{ weight: {weight}, duration: 1m }}\n    - {{ weight: 100 }}\n"
        )
    }

    #[test]
    fn a_relative_flag_path_is_relative_to_the_yaml_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            rollout("a", "../flags/a.json", 5),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yml"), rollout("b", "/abs/b.json", 5)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let scan = Source::new(dir.path()).scan();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(
            scan.rollouts["a"].flag_path,
            dir.path().join("../flags/a.json")
        );
        assert_eq!(scan.rollouts["b"].flag_path, Path::new("/abs/b.json"));
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_spec_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, rollout("a", "f.json", 5)).unwrap();
        let mut source = Source::new(dir.path());
        assert_eq!(source.scan().rollouts.len(), 1);

        std::fs::write(&file, "apiVersion: [").unwrap();
        let scan = source.scan();
        assert_eq!(scan.problems.len(), 1);
        assert!(scan.problems[0].message.contains("is not valid YAML"));
        assert!(scan.rollouts.contains_key("a"), "the last good spec stays");

        std::fs::write(&file, rollout("a", "f.json", 10)).unwrap();
        std::fs::write(dir.path().join("z.yaml"), rollout("a", "g.json", 5)).unwrap();
        let scan = source.scan();
        assert_eq!(scan.rollouts["a"].spec.stages[0].weight.to_string(), "10%");
        assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
        assert!(
            scan.problems[0]
                .message
                .contains("already the name of a rollout")
        );

        std::fs::remove_file(&file).unwrap();
        std::fs::remove_file(dir.path().join("z.yaml")).unwrap();
        assert!(source.scan().rollouts.is_empty());
    }

    #[test]
    fn a_name_the_api_server_refuses_is_refused_here_too() {
        let dir = tempfile::tempdir().unwrap();
        for (file, name) in [("a.yaml", "\"../../evil\""), ("b.yaml", "Search_V2")] {
            std::fs::write(
                dir.path().join(file),
                rollout("ok", "f.json", 5).replacen("name: ok", &format!("name: {name}"), 1),
            )
            .unwrap();
        }
        let scan = Source::new(dir.path()).scan();
        assert!(scan.rollouts.is_empty(), "{:?}", scan.rollouts.keys());
        assert_eq!(scan.problems.len(), 2, "{:?}", scan.problems);
        for problem in &scan.problems {
            assert!(problem.message.contains("metadata.name"), "{problem}");
        }
    }
}
