//! Feeds arbitrary bytes to `parse_policy` as one policy file, or as two when the
//! input contains a NUL byte (text before it is `a.toml`, after it `b.toml`), so the
//! cross-file checks (duplicates, group references) are reached too.
//!
//! Beyond "no panic", it checks that every error renders as one line with a 1-based
//! position, and that file order does not change the result.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zgate_policy::{parse_policy, SourceFile};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut files: Vec<SourceFile> = match text.split_once('\0') {
        Some((a, b)) => vec![
            SourceFile {
                name: "a.toml".into(),
                text: a.into(),
            },
            SourceFile {
                name: "b.toml".into(),
                text: b.into(),
            },
        ],
        None => vec![SourceFile {
            name: "a.toml".into(),
            text: text.into_owned(),
        }],
    };
    let result = parse_policy(&files);
    match &result {
        Ok(checked) => {
            for w in &checked.warnings {
                assert!(!w.to_string().contains('\n'));
            }
            for r in &checked.policy.rules {
                assert!(r.principals.as_ref().is_none_or(|p| !p.is_empty()));
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors.errors() {
                assert!(!e.to_string().contains('\n'));
                assert!(e.origin.line >= 1 && e.origin.column >= 1);
            }
        }
    }
    files.reverse();
    assert_eq!(parse_policy(&files), result);
});
