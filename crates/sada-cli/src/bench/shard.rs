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

/// Create the folder, or check that it holds a bench of the same settings.
pub fn prepare(out: &Path, settings: &Settings) -> Result<()> {
    let settings_path = out.join("settings.json");
    if settings_path.is_file() {
        let old = read_settings(out)?;
        if old != *settings {
            bail!("{}: this folder holds a bench with other settings; choose another --out or delete it", settings_path.display());
        }
        return Ok(());
    }
    for d in [out.to_path_buf(), out.join("runs"), out.join("images")] {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    write_atomic(&settings_path, serde_json::to_string_pretty(settings)?.as_bytes())
}

fn read_settings(dir: &Path) -> Result<Settings> {
    let path = dir.join("settings.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read (is this a bench folder?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not the settings of this version of sada bench", path.display()))
}

/// Every finished run in `dir`, in index order.
pub fn records(dir: &Path, settings: &Settings) -> Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    let runs = dir.join("runs");
    let entries = std::fs::read_dir(&runs).with_context(|| format!("cannot read {}", runs.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let r: RunRecord = serde_json::from_str(&text).with_context(|| format!("{}: not a bench run record", p.display()))?;
        let expected = settings.prompts.get(r.index / settings.seeds as usize);
        if expected != Some(&r.prompt) || r.seed != (r.index % settings.seeds as usize) as u64 {
            bail!("{}: run {} does not belong to these settings", p.display(), r.index);
        }
        out.push(r);
    }
    Ok(out)
}

/// `sada bench merge`: the runs of `dirs` (same settings) in one folder and report.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let settings = read_settings(&dirs[0])?;
    for d in &dirs[1..] {
        if read_settings(d)? != settings {
            bail!("{}: made with other settings than {}", d.join("settings.json").display(), dirs[0].display());
        }
    }
    prepare(out, &settings)?;
    let mut merged: Vec<RunRecord> = Vec::new();
    for d in dirs {
        for r in records(d, &settings)? {
            if merged.iter().any(|m| m.index == r.index) {
                continue;
            }
            let same_dir = d.canonicalize().ok() == out.canonicalize().ok();
            if !same_dir {
                let images = std::iter::once(&r.baseline).chain(&r.methods).chain(r.plain.values()).map(|m| m.image.clone());
                for img in images {
                    std::fs::copy(d.join(&img), out.join(&img)).with_context(|| format!("copying {}", d.join(&img).display()))?;
                }
                write_atomic(&out.join("runs").join(format!("{:04}.json", r.index)), serde_json::to_string_pretty(&r)?.as_bytes())?;
            }
            merged.push(r);
        }
    }
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
}
