//! The tiny Stable Diffusion pipelines of tests/fixtures/sd as complete folders (shared by the
//! library's and the command line's tests).

use std::path::{Path, PathBuf};

/// tests/fixtures/sd
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd")
}

/// Copy pipeline `fam` to `dest`, completing its tokenizers with the CLIP vocabulary the
/// fixtures leave out (the crate's compiled-in copy; each folder keeps its own pad token).
pub fn sd_folder(fam: &str, dest: &Path) {
    with_clip_vocab(&fixtures().join(fam), dest);
}

/// Copy the fixture pipeline folder `src` to `dest`, completing its CLIP tokenizers with the
/// vocabulary the fixtures leave out (folders with a `tokenizer.json`, such as Flux's T5
/// tokenizer, are complete already).
pub fn with_clip_vocab(src: &Path, dest: &Path) {
    copy_dir(src, dest);
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crates/sada/assets/clip");
    for tok in ["tokenizer", "tokenizer_2"] {
        if dest.join(tok).is_dir() && !dest.join(tok).join("tokenizer.json").exists() {
            for f in ["vocab.json", "merges.txt"] {
                std::fs::copy(assets.join(f), dest.join(tok).join(f)).unwrap();
            }
        }
    }
}

/// Copy a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
