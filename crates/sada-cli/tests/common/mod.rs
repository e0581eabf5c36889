//! Helpers shared by the CLI test binaries (each binary uses a subset).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The library's fixture-folder helpers (copying a tree, completing CLIP tokenizers).
#[path = "../../../sada/tests/common/sd_fixture.rs"]
pub mod sd_fixture;

/// A fresh, empty folder for one test: `<tmp>/sada-<binary>-<pid>-<name>`.
pub fn tmp_dir(binary: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sada-{binary}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run the `sada` binary: (success, stdout, stderr).
pub fn sada(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sada")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Assert that `help` (a subcommand's `-h` output) explains `flag`: clap prints the explanation
/// on the flag's line or, when it is long, on the next one.
pub fn assert_flag_explained(help: &str, flag: &str) {
    let lines: Vec<&str> = help.lines().collect();
    let i = lines.iter().position(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag} missing"));
    let after_flag = lines[i].trim().split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
    let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
    let text = if after_flag.is_empty() && !next.starts_with('-') { next } else { after_flag };
    assert!(text.len() > 8, "{flag} has no explanation");
}
