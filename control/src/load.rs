//! Reading inputs from disk: the policy directory and table files.

use std::fs;
use std::path::{Path, PathBuf};

use zgate_policy::{parse_policy, Checked, SourceFile};

use crate::cli::CliError;

/// Upper bound on one policy file; a policy is reviewed text, not a data dump.
const MAX_POLICY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Every `*.toml` file below `dir` (recursively, hidden entries skipped), named by its
/// path relative to `dir` with `/` separators and sorted, so rule order is stable
/// whatever the file system returns.
pub fn read_policy_dir(dir: &Path) -> Result<Vec<SourceFile>, CliError> {
    let meta = fs::metadata(dir).map_err(|source| CliError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CliError::NotADirectory(dir.to_path_buf()));
    }
    let mut paths = Vec::new();
    collect_toml(dir, &mut paths)?;
    paths.sort();
    if paths.is_empty() {
        return Err(CliError::EmptyPolicyDir(dir.to_path_buf()));
    }
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let text = read_text(&path, MAX_POLICY_FILE_BYTES)?;
        files.push(SourceFile { name, text });
    }
    Ok(files)
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let entries = fs::read_dir(dir).map_err(|source| CliError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CliError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry.file_type().map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            collect_toml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a UTF-8 text file no larger than `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String, CliError> {
    let bytes = read_bytes(path, limit)?;
    String::from_utf8(bytes).map_err(|_| CliError::NotUtf8(path.to_path_buf()))
}

/// Reads a file no larger than `limit` bytes.
pub fn read_bytes(path: &Path, limit: u64) -> Result<Vec<u8>, CliError> {
    let meta = fs::metadata(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > limit {
        return Err(CliError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit,
        });
    }
    fs::read(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and validates a policy directory. On invalid policy the errors are printed
/// to stderr here (all of them) and the returned error only counts them.
pub fn load_policy(dir: &Path) -> Result<Checked, CliError> {
    let files = read_policy_dir(dir)?;
    match parse_policy(&files) {
        Ok(checked) => Ok(checked),
        Err(errors) => {
            for e in errors.errors() {
                // Prefix the directory so every line is a clickable path.
                eprintln!("{}/{e}", dir.display());
            }
            Err(CliError::InvalidPolicy {
                dir: dir.to_path_buf(),
                count: errors.errors().len(),
            })
        }
    }
}

/// Read, validate and compile a policy directory without printing: the table (policy
/// version 0; the caller stamps its own), or every error as `DIR/file:line:col:
/// message` lines (a directory that cannot be read is one line).
pub fn compile_quietly(dir: &Path) -> Result<zgate_table::DecisionTable, Vec<String>> {
    let files = read_policy_dir(dir).map_err(|e| vec![e.to_string()])?;
    let checked = parse_policy(&files).map_err(|errors| {
        errors
            .errors()
            .iter()
            .map(|e| format!("{}/{e}", dir.display()))
            .collect::<Vec<_>>()
    })?;
    zgate_table::DecisionTable::compile(&checked.policy, 0)
        .map_err(|e| vec![format!("{}: cannot compile: {e}", dir.display())])
}
