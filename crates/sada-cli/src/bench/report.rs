//! The bench report: per-method summary with the equal-budget view, Markdown, JSON, the image
//! grid and the plots.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use sada::image::{hstack, png_bytes, upscale, vstack, RgbImage};
use serde::Serialize;

use super::{plot, MethodRun, RunRecord, Settings};
use crate::output::write_atomic;

/// One method over all runs.
#[derive(Debug, Clone, Serialize)]
pub struct MethodSummary {
    pub label: String,
    pub spec: String,
    pub mean_evaluations: f64,
    /// Mean cost in full evaluations (partial and pruned calls by their time).
    pub mean_equivalent_evaluations: f64,
    pub total_seconds: f64,
    /// Total baseline wall time over this method's, on the same runs.
    pub speedup: f64,
    #[serde(serialize_with = "super::db::serialize")]
    pub mean_psnr_db: Option<f64>,
    #[serde(serialize_with = "super::db::serialize")]
    pub min_psnr_db: Option<f64>,
    pub mean_ssim: Option<f64>,
    pub min_ssim: Option<f64>,
    pub mean_lpips: Option<f64>,
    /// The plain solver at each run's cost, over the runs where that is fewer steps than the
    /// baseline's: its mean PSNR / SSIM / LPIPS, and this method's mean PSNR minus it.
    pub equal_budget_runs: usize,
    #[serde(serialize_with = "super::db::serialize")]
    pub equal_budget_psnr_db: Option<f64>,
    pub equal_budget_ssim: Option<f64>,
    pub equal_budget_lpips: Option<f64>,
    #[serde(serialize_with = "super::db::serialize")]
    pub psnr_gain_over_equal_budget_db: Option<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

/// Summaries of `runs` (one per record) against the records' baselines.
fn summarize(records: &[RunRecord], runs: &[&MethodRun]) -> MethodSummary {
    let n = runs.len().max(1) as f64;
    let total: f64 = runs.iter().map(|r| r.seconds).sum();
    let base_total: f64 = records.iter().map(|r| r.baseline.seconds).sum();
    let col = |f: fn(&MethodRun) -> Option<f64>| -> Vec<f64> { runs.iter().filter_map(|r| f(r)).collect() };
    let (psnr, ssim, lpips) = (col(|r| r.psnr_db), col(|r| r.ssim), col(|r| r.lpips));
    // the equal-budget view, run by run
    let mut eb = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (rec, run) in records.iter().zip(runs) {
        if let Some(p) = run.equal_budget_steps.and_then(|k| rec.plain.get(&k)) {
            eb.0.extend(p.psnr_db);
            eb.1.extend(p.ssim);
            eb.2.extend(p.lpips);
            if let (Some(a), Some(b)) = (run.psnr_db, p.psnr_db) {
                eb.3.push(a - b);
            }
        }
    }
    let first = runs.first();
    MethodSummary {
        label: first.map(|r| r.label.clone()).unwrap_or_default(),
        spec: first.map(|r| r.spec.clone()).unwrap_or_default(),
        mean_evaluations: runs.iter().map(|r| r.evaluations as f64).sum::<f64>() / n,
        mean_equivalent_evaluations: runs.iter().map(|r| r.equivalent_evaluations).sum::<f64>() / n,
        total_seconds: total,
        speedup: base_total / total,
        mean_psnr_db: mean(&psnr),
        min_psnr_db: min(&psnr),
        mean_ssim: mean(&ssim),
        min_ssim: min(&ssim),
        mean_lpips: mean(&lpips),
        equal_budget_runs: eb.0.len(),
        equal_budget_psnr_db: mean(&eb.0),
        equal_budget_ssim: mean(&eb.1),
        equal_budget_lpips: mean(&eb.2),
        psnr_gain_over_equal_budget_db: mean(&eb.3),
    }
}

/// The baseline, then every method in the settings' order.
pub fn summaries(settings: &Settings, records: &[RunRecord]) -> Vec<MethodSummary> {
    let mut out = vec![summarize(records, &records.iter().map(|r| &r.baseline).collect::<Vec<_>>())];
    for m in 0..settings.methods.len() {
        out.push(summarize(records, &records.iter().map(|r| &r.methods[m]).collect::<Vec<_>>()));
    }
    out
}

/// The plain solver's runs grouped by steps: (steps, mean PSNR, speedup over the baseline on
/// the same runs), for the trade-off plot. Only step counts run on every prompt x seed count:
/// means over different images would not be comparable.
pub fn plain_curve(records: &[RunRecord]) -> Vec<(usize, f64, f64)> {
    let mut by_steps: BTreeMap<usize, (Vec<f64>, f64, f64)> = BTreeMap::new();
    let everywhere = |k: &usize| records.iter().all(|r| r.plain.contains_key(k));
    for r in records {
        for (k, p) in &r.plain {
            let e = by_steps.entry(*k).or_default();
            e.0.extend(p.psnr_db);
            e.1 += p.seconds;
            e.2 += r.baseline.seconds;
        }
    }
    by_steps.into_iter().filter(|(k, _)| everywhere(k)).filter_map(|(k, (psnr, secs, base))| Some((k, mean(&psnr)?, base / secs))).collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

fn markdown(settings: &Settings, summary: &[MethodSummary], records: &[RunRecord]) -> String {
    let total = settings.prompts.len() * settings.seeds as usize;
    let mut s = format!(
        "# sada bench\n\nmodel `{}`, {} prompts x {} seeds ({} of {total} runs here), {} steps, solver {:?}, guidance {}\n\n",
        settings.model,
        settings.prompts.len(),
        settings.seeds,
        records.len(),
        settings.steps,
        settings.solver,
        settings.guidance_scale
    );
    let lp = settings.lpips.is_some();
    s += &format!(
        "| method | evaluations | cost (full evals) | wall s | speedup | PSNR dB mean (min) | SSIM mean (min) |{} plain solver at the same cost: PSNR / SSIM | PSNR gain dB |\n|---|---|---|---|---|---|---|{}---|---|\n",
        if lp { " LPIPS |" } else { "" },
        if lp { "---|" } else { "" }
    );
    for m in summary {
        s += &format!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2}x | {} ({}) | {} ({}) |{} {} / {} | {} |\n",
            if m.spec == "none" { "baseline" } else { m.label.as_str() },
            m.mean_evaluations,
            m.mean_equivalent_evaluations,
            m.total_seconds,
            m.speedup,
            opt(m.mean_psnr_db, 2),
            opt(m.min_psnr_db, 2),
            opt(m.mean_ssim, 4),
            opt(m.min_ssim, 4),
            if lp { format!(" {} |", opt(m.mean_lpips, 4)) } else { String::new() },
            opt(m.equal_budget_psnr_db, 2),
            opt(m.equal_budget_ssim, 4),
            opt(m.psnr_gain_over_equal_budget_db, 2),
        );
    }
    s += "\nCost counts a full network call as 1 and a partial or pruned one by its time over the run's full calls. \
          The plain solver gets round(cost) steps of the same schedule from the same noise; the gain is the method's \
          PSNR minus the plain solver's (positive: the method is worth its cost).\n";
    s += "\n| # | prompt | seed |";
    let cols = &summary[1..=settings.columns.min(summary.len() - 1)];
    for m in cols {
        s += &format!(" {} evals / PSNR |", m.label);
    }
    s += "\n|---|---|---|";
    s += &"---|".repeat(cols.len());
    s += "\n";
    for r in records {
        s += &format!("| {} | {} | {} |", r.index, r.prompt, r.seed);
        for m in &r.methods[..cols.len()] {
            s += &format!(" {} / {} |", m.evaluations, opt(m.psnr_db, 2));
        }
        s += "\n";
    }
    s
}

/// Rows: runs; columns: the baseline and the leading methods.
fn grid(out: &Path, settings: &Settings, records: &[RunRecord]) -> Result<RgbImage> {
    let mut rows = Vec::new();
    for r in records {
        let mut cells = Vec::new();
        for m in std::iter::once(&r.baseline).chain(&r.methods[..settings.columns]) {
            let img = read_png(&out.join(&m.image))?;
            let factor = (128 / img.width.max(1)).max(1);
            cells.push(upscale(&img, factor));
        }
        let refs: Vec<&RgbImage> = cells.iter().collect();
        rows.push(hstack(&refs));
    }
    let refs: Vec<&RgbImage> = rows.iter().collect();
    Ok(vstack(&refs))
}

fn read_png(path: &Path) -> Result<RgbImage> {
    Ok(sada::image::read_png(path)?)
}

/// Write bench.md, bench.json, grid.png, tradeoff.svg and (with SADA) criterion.svg; returns
/// the Markdown.
pub fn write(out: &Path, settings: &Settings, records: &[RunRecord]) -> Result<String> {
    let summary = summaries(settings, records);
    let report = serde_json::json!({ "settings": settings, "summary": summary, "runs": records });
    write_atomic(&out.join("bench.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let md = markdown(settings, &summary, records);
    write_atomic(&out.join("bench.md"), md.as_bytes())?;
    if !records.is_empty() {
        let layout = format!(
            "rows: prompt x seed; columns: baseline | {}",
            summary[1..=settings.columns].iter().map(|m| m.label.as_str()).collect::<Vec<_>>().join(" | ")
        );
        write_atomic(&out.join("grid.png"), &png_bytes(&grid(out, settings, records)?, &[("layout", layout)])?)?;
    }
    write_atomic(&out.join("tradeoff.svg"), plot::tradeoff_svg(&summary[1..], &plain_curve(records)).as_bytes())?;
    let traces: Vec<&sada::sampling::Trace> = records.iter().filter_map(|r| r.sada_trace.as_ref()).collect();
    if !traces.is_empty() {
        let range = settings
            .methods
            .iter()
            .find_map(|spec| match sada::policy::Acceleration::parse(spec, settings.family) {
                Ok(sada::policy::Acceleration::Sada(c)) => Some(c.acc_range),
                _ => None,
            })
            .unwrap_or((0, 0));
        write_atomic(&out.join("criterion.svg"), plot::criterion_svg(&traces, settings.steps, range).as_bytes())?;
    }
    Ok(md)
}
