//! Reading the small files a user or a download hands us (configs, tokenizers, refs, tokens,
//! prompt lists, run records) without trusting what they are.
//!
//! A path can name a FIFO (opening it blocks until a writer comes), a device such as
//! `/dev/zero` (reads never end), or a file in `/proc` (its size reads as 0). So a file is
//! opened only after its metadata, with symlinks followed, says it is a regular file, and every
//! read stops at a byte limit counted while reading, never at the size the metadata claims.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Configs, tokenizer files, indexes and records larger than this are refused (the largest
/// real one, a T5 `tokenizer.json`, is 2.4 MB).
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// Refuse anything at `path` but a regular file (following symlinks); `what` names the file's
/// role in the message.
pub fn check_regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot read: {}", io_reason(&e))))?;
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "a folder"
    } else {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            "a named pipe"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }
    };
    Err(Error::file(path, format!("is {kind}; expected a regular file")))
}

/// The bytes of the regular file `path`, at most `max` of them (more is an error naming the limit).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    check_regular(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {}", io_reason(&e))))?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::file(path, format!("cannot read: {}", io_reason(&e))))?;
    if bytes.len() as u64 > max {
        return Err(Error::file(path, format!("larger than {}; not a file of this kind", human_bytes(max))));
    }
    Ok(bytes)
}

/// The UTF-8 text of the regular file `path`, at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| Error::file(path, "not UTF-8 text"))
}

/// A byte count in the largest unit that keeps it at least 1 (`512 B`, `1.5 KiB`, `20.0 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An I/O error's reason without the "(os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.json");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_text(&f, 10).unwrap(), "0123456789");
        let e = read_bounded(&f, 9).unwrap_err().to_string();
        assert!(e.contains("larger than 9 B"), "{e}");
        // a device reads forever and reports size 0; a FIFO blocks on open
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("is a device"), "{e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read_text(&fifo, 100).unwrap_err().to_string();
        assert!(e.contains("is a named pipe"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_text(&link, 100).unwrap_err().to_string().contains("is a device"));
        assert!(read_text(dir.path(), 100).unwrap_err().to_string().contains("is a folder"));
        assert!(read_text(&dir.path().join("none"), 100).unwrap_err().to_string().contains("not found"));
    }

    #[test]
    fn sizes_are_named_in_a_unit_that_shows_them() {
        assert_eq!(human_bytes(1), "1 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
    }
}
