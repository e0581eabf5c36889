//! Bench folders: their settings, their runs, splitting the work over machines and merging
//! the folders back into one report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{report, RunRecord, Settings};
use crate::output::write_atomic;

/// Which prompt x seed pairs this process runs: those with index % count == index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn takes(&self, run: usize) -> bool {
        run % self.count == self.index
    }

    /// From `--shard I/N` (either part may be `auto`), else from a Slurm array job's
    /// environment, else the whole bench.
    pub fn from_args(arg: Option<&str>) -> Result<Self> {
        Self::parse(arg, &|k| std::env::var(k).ok())
    }

    fn parse(arg: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str| -> Result<Option<usize>> {
            env(name).map(|v| v.trim().parse::<usize>().with_context(|| format!("{name}={v} is not a number"))).transpose()
        };
        let auto_index = || -> Result<usize> {
            if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
                let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                return id.checked_sub(min).with_context(|| format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"));
            }
            number("JOB_COMPLETION_INDEX")?.context("--shard auto/N: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set")
        };
        let auto_count = || -> Result<usize> {
            number("SLURM_ARRAY_TASK_COUNT")?.context("--shard I/auto: SLURM_ARRAY_TASK_COUNT is not set; give the count, e.g. --shard auto/8")
        };
        let shard = match arg {
            Some(spec) => {
                let (i, n) = spec.split_once('/').with_context(|| format!("--shard {spec}: expected I/N, e.g. 0/4"))?;
                let index =
                    if i.trim() == "auto" { auto_index()? } else { i.trim().parse().with_context(|| format!("--shard {spec}: `{i}` is not a number"))? };
                let count =
                    if n.trim() == "auto" { auto_count()? } else { n.trim().parse().with_context(|| format!("--shard {spec}: `{n}` is not a number"))? };
                Shard { index, count }
            }
            None if env("SLURM_ARRAY_TASK_COUNT").is_some() => Shard { index: auto_index()?, count: auto_count()? },
            None => Shard { index: 0, count: 1 },
        };
        if shard.count == 0 || shard.index >= shard.count {
            bail!("--shard {}/{}: the index must be below the count (0-based)", shard.index, shard.count);
        }
        Ok(shard)
    }
}

/// Before any work: `out` can be (or is) a bench folder.
pub fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {}: is a file; give a folder", out.display());
        }
        return crate::output::check_writable("--out", &out.join("settings.json"));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::output::check_writable("--out", &parent.join(out.file_name().unwrap_or_default()))
}

/// Held while this process writes into a bench folder: a second `sada bench` (or merge) into
/// the same folder is refused instead of mixing runs of other settings into it.
pub struct FolderLock(#[allow(dead_code)] std::fs::File);

/// Lock the folder `out` (an advisory lock on the folder itself, so nothing is left in it).
fn lock(out: &Path) -> Result<FolderLock> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(out).with_context(|| format!("--out {}: cannot open the folder", out.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("--out {}: another sada bench is writing into this folder; wait for it to finish or choose another --out", out.display());
    }
    Ok(FolderLock(f))
}

/// Create the folder (or check that it holds a bench of the same settings) and lock it for as
/// long as the returned lock lives.
pub fn prepare(out: &Path, settings: &Settings) -> Result<FolderLock> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let lock = lock(out)?;
    let settings_path = out.join("settings.json");
    let exists = std::fs::symlink_metadata(&settings_path).is_ok();
    if exists && read_settings(out)? != *settings {
        bail!("{}: this folder holds a bench with other settings; choose another --out or delete it", settings_path.display());
    }
    for d in [out.join("runs"), out.join("images")] {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        anyhow::ensure!(d.is_dir(), "{}: is not a folder; this is not a bench folder", d.display());
    }
    if !exists {
        write_atomic(&settings_path, serde_json::to_string_pretty(settings)?.as_bytes())?;
    }
    Ok(lock)
}

/// Settings, run records and the records' images are small; a larger file is not one of them.
const MAX_RECORD: u64 = 64 << 20;
/// An image of a bench run (a PNG at the model's size).
const MAX_IMAGE: u64 = 512 << 20;

fn read_settings(dir: &Path) -> Result<Settings> {
    let path = dir.join("settings.json");
    let text = sada::files::read_text(&path, MAX_RECORD).with_context(|| format!("{}: is this a bench folder?", dir.display()))?;
    let s: Settings = serde_json::from_str(&text).with_context(|| format!("{}: not the settings of this version of sada bench", path.display()))?;
    let runs = s.prompts.len() as u128 * s.seeds as u128;
    if s.prompts.is_empty() || s.seeds == 0 || runs > super::MAX_RUNS as u128 || s.columns > s.methods.len() {
        bail!(
            "{}: impossible settings ({} prompts x {} seeds, {} grid columns of {} methods)",
            path.display(),
            s.prompts.len(),
            s.seeds,
            s.columns,
            s.methods.len()
        );
    }
    Ok(s)
}

/// Every finished run in `dir`, in index order, each checked against the settings; the images
/// a record names must be files in `dir/images/` (records come from other machines).
pub fn records(dir: &Path, settings: &Settings) -> Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    let runs = dir.join("runs");
    let entries = std::fs::read_dir(&runs).with_context(|| format!("cannot read {}", runs.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    paths.sort();
    let total = settings.prompts.len() * settings.seeds as usize;
    for p in paths {
        let r = read_record(&p)?;
        let expected = settings.prompts.get(r.index / settings.seeds as usize);
        if r.index >= total || expected != Some(&r.prompt) || r.seed != (r.index % settings.seeds as usize) as u64 {
            bail!("{}: run {} does not belong to these settings", p.display(), r.index);
        }
        for image in record_images(&r) {
            image_in(dir, image).with_context(|| format!("{}: run {}", p.display(), r.index))?;
        }
        out.push(r);
    }
    Ok(out)
}

/// One run record (`runs/NNNN.json`), read bounded.
pub fn read_record(p: &Path) -> Result<RunRecord> {
    let text = sada::files::read_text(p, MAX_RECORD)?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a bench run record", p.display()))
}

fn record_images(r: &RunRecord) -> impl Iterator<Item = &str> {
    std::iter::once(&r.baseline).chain(&r.methods).chain(r.plain.values()).map(|m| m.image.as_str())
}

/// The file `image` (as a record writes it, `images/NAME.png`) names in `dir`: only a plain
/// file name under `images/`, never a path that leaves it, and never a link.
fn image_in(dir: &Path, image: &str) -> Result<PathBuf> {
    let name = image.strip_prefix("images/").unwrap_or("");
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    anyhow::ensure!(plain, "image `{image}`: expected images/NAME.png, a file in the folder's images/");
    let path = dir.join("images").join(name);
    let meta = std::fs::symlink_metadata(&path).with_context(|| format!("{}: missing", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{}: not a regular file", path.display());
    Ok(path)
}

/// `sada bench merge`: the runs of `dirs` (same settings) in one folder and report. Every
/// folder, record and image is checked before `out` is created or written.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let settings = read_settings(&dirs[0])?;
    for d in &dirs[1..] {
        if read_settings(d)? != settings {
            bail!("{}: made with other settings than {}", d.join("settings.json").display(), dirs[0].display());
        }
    }
    let out_dir = out.canonicalize().ok();
    let mut merged: Vec<(RunRecord, Option<&PathBuf>)> = Vec::new();
    for d in dirs {
        let from_out = out_dir.is_some() && d.canonicalize().ok() == out_dir;
        for r in records(d, &settings)? {
            if !merged.iter().any(|(m, _)| m.index == r.index) {
                merged.push((r, (!from_out).then_some(d)));
            }
        }
    }
    if out.exists() {
        check_out(out)?;
    }
    let _lock = prepare(out, &settings)?;
    for (r, from) in &merged {
        let Some(d) = from else { continue };
        for image in record_images(r) {
            let src = image_in(d, image)?;
            let dst = out.join(image);
            // read in full first: were both the same file, nothing would be lost
            let bytes = sada::files::read_bounded(&src, MAX_IMAGE)?;
            write_atomic(&dst, &bytes).with_context(|| format!("copying {}", src.display()))?;
        }
        write_atomic(&out.join("runs").join(format!("{:04}.json", r.index)), serde_json::to_string_pretty(r)?.as_bytes())?;
    }
    let mut merged: Vec<RunRecord> = merged.into_iter().map(|(r, _)| r).collect();
    merged.sort_by_key(|r| r.index);
    let total = settings.prompts.len() * settings.seeds as usize;
    let md = report::write(out, &settings, &merged)?;
    print!("{md}");
    println!("\nmerged {} of {total} runs from {} folders into {}", merged.len(), dirs.len(), out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(arg: Option<&str>, env: &[(&str, &str)]) -> Result<Shard> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Shard::parse(arg, &|k| env.get(k).cloned())
    }

    #[test]
    fn shards_come_from_the_flag_or_the_cluster_environment() {
        assert_eq!(parse(None, &[]).unwrap(), Shard { index: 0, count: 1 });
        assert_eq!(parse(Some("2/8"), &[]).unwrap(), Shard { index: 2, count: 8 });
        let slurm = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "6")];
        assert_eq!(parse(None, &slurm).unwrap(), Shard { index: 4, count: 6 });
        assert_eq!(parse(Some("auto/auto"), &slurm).unwrap(), Shard { index: 4, count: 6 });
        assert_eq!(parse(Some("auto/3"), &[("JOB_COMPLETION_INDEX", "2")]).unwrap(), Shard { index: 2, count: 3 });
        for (arg, env, needle) in [
            (Some("3/3"), vec![], "below the count"),
            (Some("1/0"), vec![], "below the count"),
            (Some("x/3"), vec![], "`x` is not a number"),
            (Some("2"), vec![], "expected I/N"),
            (Some("auto/3"), vec![], "JOB_COMPLETION_INDEX"),
            (Some("auto/3"), vec![("JOB_COMPLETION_INDEX", "3")], "below the count"),
            (Some("0/auto"), vec![("JOB_COMPLETION_INDEX", "0")], "SLURM_ARRAY_TASK_COUNT"),
        ] {
            let e = format!("{:#}", parse(arg, &env).unwrap_err());
            assert!(e.contains(needle), "{arg:?}: {e}");
        }
        let s = Shard { index: 1, count: 3 };
        assert_eq!((0..9).filter(|&i| s.takes(i)).collect::<Vec<_>>(), vec![1, 4, 7]);
    }

    #[test]
    fn a_bench_folder_takes_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let e = format!("{:#}", lock(dir.path()).err().expect("a second lock was granted"));
        assert!(e.contains("another sada bench"), "{e}");
        drop(first);
        lock(dir.path()).unwrap();
    }
}
