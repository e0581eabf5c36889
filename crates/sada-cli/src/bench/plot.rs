//! The bench's plots as SVG: SADA's criterion over the steps, and speed against fidelity.

use sada::policy::Decision;
use sada::sampling::Trace;

use super::report::MethodSummary;

fn colour(d: Decision) -> &'static str {
    match d {
        Decision::Full => "#444",
        Decision::Refresh => "#39c",
        Decision::Pruned => "#9c3",
        Decision::Partial => "#6cc",
        Decision::SkipAm => "#f90",
        Decision::SkipLagrange => "#c3c",
        Decision::SkipExtrapolate => "#e55",
        Decision::Reuse => "#c96",
    }
}

/// SADA's stability criterion over the steps of every run (symmetric-log scale: stable steps,
/// criterion <= 0, lie on or below the zero line) and the decisions of the first run as a strip.
pub fn criterion_svg(traces: &[&Trace], steps: usize, acc_range: (usize, usize)) -> String {
    let (w, h, left, top, plot_h, strip_h) = (900.0, 420.0, 60.0, 30.0, 260.0, 24.0);
    let plot_w = w - left - 20.0;
    let x = |n: f64| left + plot_w * n / steps.max(1) as f64;
    let values: Vec<f64> = traces.iter().flat_map(|t| t.steps.iter().filter_map(|s| s.criterion)).collect();
    let mut mags: Vec<f64> = values.iter().map(|v| v.abs()).filter(|v| *v > 0.0).collect();
    mags.sort_by(f64::total_cmp);
    let scale = mags.get(mags.len() / 2).copied().unwrap_or(1.0);
    let f = |v: f64| (v / scale).asinh();
    let max = values.iter().map(|v| f(*v).abs()).fold(1.0, f64::max);
    let y = |v: f64| top + plot_h / 2.0 - (plot_h / 2.0) * f(v) / max;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!(
        "<text x=\"{left}\" y=\"18\">SADA stability criterion mean(m) per step (asinh(m / {scale:.3e}); at or below 0 = stable), {} runs</text>\n",
        traces.len()
    );
    s += &format!(
        "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\" fill=\"#eef\"/>\n",
        x(acc_range.0 as f64),
        x(acc_range.1 as f64) - x(acc_range.0 as f64)
    );
    s += &format!("<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n", left + plot_w, y(0.0), y(0.0));
    s += &format!("<text x=\"4\" y=\"{:.1}\">0</text>\n", y(0.0) + 4.0);
    for t in traces {
        let pts: Vec<String> = t.steps.iter().filter_map(|st| st.criterion.map(|c| format!("{:.1},{:.1}", x(st.index as f64 + 0.5), y(c)))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"#c33\" stroke-opacity=\"0.5\" points=\"{}\"/>\n", pts.join(" "));
    }
    let strip_y = top + plot_h + 20.0;
    if let Some(t) = traces.first() {
        for st in &t.steps {
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{strip_y}\" width=\"{:.1}\" height=\"{strip_h}\" fill=\"{}\"/>\n",
                x(st.index as f64),
                (x(1.0) - x(0.0) - 1.0).max(1.0),
                colour(st.decision)
            );
        }
        s += &format!("<text x=\"4\" y=\"{:.1}\">run 0</text>\n", strip_y + 16.0);
    }
    for n in (0..=steps).step_by(10) {
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>\n", x(n as f64), strip_y + strip_h + 16.0);
    }
    let mut lx = left;
    for d in [Decision::Full, Decision::Refresh, Decision::Pruned, Decision::SkipAm, Decision::SkipLagrange] {
        s += &format!(
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            h - 22.0,
            colour(d),
            lx + 16.0,
            h - 12.0,
            d.name()
        );
        lx += 120.0;
    }
    s += &format!("<text x=\"{:.1}\" y=\"{:.1}\">shaded: acc_range</text>\n", lx, h - 12.0);
    s + "</svg>\n"
}

/// About `n` round tick values between `lo` and `hi`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let step = ((hi - lo) / n as f64).max(1e-9);
    let mag = 10f64.powf(step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= step).unwrap_or(step);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi {
        out.push(v);
        v += step;
    }
    out
}

/// Named series of (x, y) points as lines with dots, on shared linear axes.
pub fn lines_svg(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 520.0, 70.0, 160.0, 40.0, 60.0);
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).filter(|(a, b)| a.is_finite() && b.is_finite()).collect();
    let lo = |f: fn(&(f64, f64)) -> f64| pts.iter().map(f).fold(f64::INFINITY, f64::min);
    let hi = |f: fn(&(f64, f64)) -> f64| pts.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = if pts.is_empty() { (0.0, 1.0) } else { (lo(|p| p.0) - 1.0, hi(|p| p.0) + 1.0) };
    let (y0, y1) = if pts.is_empty() { (0.0, 1.0) } else { (lo(|p| p.1) - 2.0, hi(|p| p.1) + 2.0) };
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x = |v: f64| left + pw * (v - x0) / (x1 - x0);
    let y = |v: f64| top + ph * (1.0 - (v - y0) / (y1 - y0));
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<text x=\"{left}\" y=\"22\">{}</text>\n", escape(title));
    s += &format!("<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>\n");
    for t in ticks(x0, x1, 8) {
        s += &format!(
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1:.1}\" stroke=\"#eee\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{t}</text>\n",
            x(t),
            top + ph,
            top + ph + 16.0
        );
    }
    for t in ticks(y0, y1, 8) {
        s += &format!("<line x1=\"{left}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"#eee\"/><text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{t:.0}</text>\n", left + pw, y(t), left - 6.0, y(t) + 4.0);
    }
    s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n", left + pw / 2.0, h - 14.0, escape(x_label));
    s += &format!("<text x=\"16\" y=\"{0:.1}\" transform=\"rotate(-90 16 {0:.1})\" text-anchor=\"middle\">{1}</text>\n", top + ph / 2.0, escape(y_label));
    for (i, (name, points)) in series.iter().enumerate() {
        s += &series_svg(points.clone(), i, name, &x, &y, (w - right + 20.0, top + 10.0 + 18.0 * i as f64));
    }
    s + "</svg>\n"
}

/// Series `index` of a plot: its finite points joined in x order, dots, and its legend entry at
/// `legend` (x, y).
fn series_svg(mut points: Vec<(f64, f64)>, index: usize, name: &str, x: &dyn Fn(f64) -> f64, y: &dyn Fn(f64) -> f64, legend: (f64, f64)) -> String {
    let c = PALETTE[index % PALETTE.len()];
    points.retain(|(a, b)| a.is_finite() && b.is_finite());
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut s = String::new();
    if points.len() > 1 {
        let line: Vec<String> = points.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"{c}\" points=\"{}\"/>\n", line.join(" "));
    }
    for (a, b) in &points {
        s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\"/>\n", x(*a), y(*b));
    }
    let (lx, ly) = legend;
    s + &format!("<circle cx=\"{lx:.1}\" cy=\"{ly:.1}\" r=\"4\" fill=\"{c}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n", lx + 10.0, ly + 4.0, escape(name))
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const PALETTE: [&str; 8] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/// Mean PSNR against wall-clock speedup: one point per method setting (a method's sweep joined
/// by a line), and the plain solver with fewer steps as the reference curve.
pub fn tradeoff_svg(methods: &[MethodSummary], plain: &[(usize, f64, f64)]) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 560.0, 70.0, 240.0, 40.0, 60.0);
    let pts: Vec<(f64, f64)> = methods
        .iter()
        .filter_map(|m| Some((m.speedup, m.mean_psnr_db?)))
        .chain(plain.iter().map(|&(_, p, s)| (s, p)))
        .filter(|(s, p)| s.is_finite() && p.is_finite())
        .collect();
    let (x0, x1) = (1.0f64.min(pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min)) - 0.1, pts.iter().map(|p| p.0).fold(1.5, f64::max) + 0.2);
    let (y0, y1) =
        (pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(60.0) - 2.0, pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).max(0.0) + 2.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x = |v: f64| left + pw * (v - x0) / (x1 - x0);
    let y = |v: f64| top + ph * (1.0 - (v - y0) / (y1 - y0));
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<text x=\"{left}\" y=\"22\">Fidelity to the baseline against speed (mean PSNR dB vs wall-clock speedup)</text>\n");
    s += &format!("<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>\n");
    for t in ticks(x0, x1, 8) {
        s += &format!("<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1:.1}\" stroke=\"#eee\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{t:.1}x</text>\n", x(t), top + ph, top + ph + 16.0);
    }
    for t in ticks(y0, y1, 8) {
        s += &format!("<line x1=\"{left}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"#eee\"/><text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{t:.0}</text>\n", left + pw, y(t), left - 6.0, y(t) + 4.0);
    }
    s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">speedup over the baseline (wall clock)</text>\n", left + pw / 2.0, h - 14.0);
    s += &format!(
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">PSNR vs baseline (dB)</text>\n",
        top + ph / 2.0,
        top + ph / 2.0
    );
    // the plain solver
    let mut curve: Vec<(f64, f64, usize)> = plain.iter().filter(|(_, p, sp)| p.is_finite() && sp.is_finite()).map(|&(k, p, sp)| (sp, p, k)).collect();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !curve.is_empty() {
        let line: Vec<String> = curve.iter().map(|(sp, p, _)| format!("{:.1},{:.1}", x(*sp), y(*p))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"#000\" stroke-dasharray=\"4 3\" points=\"{}\"/>\n", line.join(" "));
        for (sp, p, k) in &curve {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#000\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{k}</text>\n",
                x(*sp),
                y(*p),
                x(*sp) + 3.0,
                y(*p) - 3.0
            );
        }
    }
    // methods, one colour per method name, a sweep joined in order
    let mut names: Vec<&str> = Vec::new();
    for m in methods {
        let name = m.spec.split(':').next().unwrap_or("");
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for (i, name) in names.iter().enumerate() {
        let own: Vec<(f64, f64)> =
            methods.iter().filter(|m| m.spec.split(':').next() == Some(name)).filter_map(|m| Some((m.speedup, m.mean_psnr_db?))).collect();
        s += &series_svg(own, i, name, &x, &y, (w - right + 20.0, top + 10.0 + 18.0 * i as f64));
    }
    let ly = top + 10.0 + 18.0 * names.len() as f64;
    s += &format!(
        "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"#000\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\">plain solver (steps)</text>\n",
        w - right + 14.0,
        w - right + 26.0,
        w - right + 30.0,
        ly + 4.0
    );
    s + "</svg>\n"
}
