//! Forest plots as standalone SVG: each arm's paired difference from a baseline, seed by seed and
//! as a mean with its 95% confidence interval, against a line at zero — how `ctrcl experiment`
//! shows at a glance which differences are beyond noise (an interval clear of zero) and which
//! are not. No plotting dependency, as `plot.rs`.

use super::plot::{escape, svg_start, x_grid, PALETTE};
use std::fmt::Write as _;

/// One row: a label, the per-seed differences, and their mean with the half-width of its
/// interval (NaN half-width: a single seed, no interval drawn).
#[derive(Debug, Clone)]
pub struct ForestRow {
    pub label: String,
    /// Index into [`PALETTE`] (e.g. one colour per student).
    pub colour: usize,
    pub diffs: Vec<f64>,
    pub mean: f64,
    pub half: f64,
}

/// Whether the interval `mean ± half` excludes zero (false without an interval, `half` NaN):
/// the one test of "beyond noise" behind the plots and the experiment tables.
pub fn excludes_zero(mean: f64, half: f64) -> bool {
    !half.is_nan() && (mean - half > 0.0 || mean + half < 0.0)
}

impl ForestRow {
    /// Whether the interval excludes zero.
    pub fn beyond_noise(&self) -> bool {
        excludes_zero(self.mean, self.half)
    }
}

const PLOT_WIDTH: f64 = 420.0;
const ROW_HEIGHT: f64 = 28.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;
/// Width of the column right of the plot that prints each row's mean ± half-width.
const ANNOTATION: f64 = 150.0;

/// The plotted x range: every finite difference, mean and interval end, and zero, padded by 8%
/// on each side.
fn x_range(rows: &[ForestRow]) -> (f64, f64) {
    let values = rows.iter().flat_map(|r| {
        let ends = if r.half.is_nan() {
            [r.mean, r.mean]
        } else {
            [r.mean - r.half, r.mean + r.half]
        };
        r.diffs.iter().copied().chain(ends)
    });
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if hi > lo { (lo, hi) } else { (-0.01, 0.01) };
    let pad = 0.08 * (hi - lo);
    (lo - pad, hi + pad)
}

/// An SVG forest plot of `rows` (top to bottom in the given order) with the x axis titled
/// `x_label`. Each row: its seeds as small dots, the mean as a square on its 95% interval, filled
/// and its annotation bold when the interval excludes zero. Non-finite values are skipped.
pub fn forest_plot(title: &str, x_label: &str, rows: &[ForestRow]) -> String {
    let longest = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    let left = 16.0 + 7.0 * longest as f64;
    let ph = ROW_HEIGHT * rows.len().max(1) as f64;
    let (width, height) = (
        (left + PLOT_WIDTH + ANNOTATION).round(),
        (TOP + ph + BOTTOM).round(),
    );
    let (x0, x1) = x_range(rows);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * PLOT_WIDTH;
    let row_y = |i: usize| TOP + ROW_HEIGHT * (i as f64 + 0.5);

    let mut svg = svg_start(width, height, left + PLOT_WIDTH / 2.0, title);
    x_grid(&mut svg, (x0, x1), px, TOP, ph);
    let _ = writeln!(
        svg,
        r##"<rect x="{left:.1}" y="{TOP}" width="{PLOT_WIDTH}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let zero = px(0.0);
    let _ = writeln!(
        svg,
        r##"<line class="zero" x1="{zero:.1}" y1="{TOP}" x2="{zero:.1}" y2="{:.1}" stroke="#222" stroke-dasharray="4 3"/>"##,
        TOP + ph
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + PLOT_WIDTH / 2.0,
        height - 10.0,
        escape(x_label)
    );
    for (i, row) in rows.iter().enumerate() {
        let y = row_y(i);
        let colour = PALETTE[row.colour % PALETTE.len()];
        let strong = row.beyond_noise();
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 4.0,
            escape(&row.label)
        );
        if !row.half.is_nan() && row.mean.is_finite() {
            let _ = writeln!(
                svg,
                r#"<line class="ci" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2.5"/>"#,
                px(row.mean - row.half),
                px(row.mean + row.half)
            );
        }
        // Seeds a little above the interval, so they do not hide it.
        for d in row.diffs.iter().filter(|d| d.is_finite()) {
            let _ = writeln!(
                svg,
                r#"<circle class="seed" cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}" fill-opacity="0.55"/>"#,
                px(*d),
                y - 7.0
            );
        }
        if row.mean.is_finite() {
            let fill = if strong { colour } else { "white" };
            let _ = writeln!(
                svg,
                r#"<rect class="mean" x="{:.1}" y="{:.1}" width="8" height="8" fill="{fill}" stroke="{colour}" stroke-width="1.8"/>"#,
                px(row.mean) - 4.0,
                y - 4.0
            );
        }
        let text = if row.half.is_nan() {
            format!("{:+.3} (one seed)", row.mean)
        } else {
            format!("{:+.3} ± {:.3}", row.mean, row.half)
        };
        let weight = if strong { r#" font-weight="bold""# } else { "" };
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}"{weight}>{text}</text>"#,
            left + PLOT_WIDTH + 10.0,
            y + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers after `name="` in every element of class `class`.
    fn attr(svg: &str, class: &str, name: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.contains(&format!(r#"class="{class}""#)))
            .map(|l| {
                let v = l.split(&format!(r#" {name}=""#)).nth(1).unwrap();
                v[..v.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    fn row(label: &str, diffs: &[f64], mean: f64, half: f64) -> ForestRow {
        ForestRow {
            label: label.into(),
            colour: 0,
            diffs: diffs.to_vec(),
            mean,
            half,
        }
    }

    #[test]
    fn positions_follow_the_axis_and_zero_is_marked() {
        let rows = [
            row("dml · cnn", &[-0.02, 0.0, 0.02], 0.0, 0.05),
            row("ctrcl · transformer", &[0.04, 0.06, 0.08], 0.06, 0.05),
        ];
        let svg = forest_plot("t", "Δ Dice", &rows);
        // Range [−0.05, 0.11] (interval ends), padded 8% each side: [−0.0628, 0.1228]; the plot
        // starts right of the longest label (19 chars → 16 + 7·19 = 149 px).
        let (x0, x1, left) = (-0.05 - 0.0128, 0.11 + 0.0128, 149.0);
        let px = |x: f64| left + (x - x0) / (x1 - x0) * PLOT_WIDTH;
        let close = |got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 0.051, "{got:?} vs {want:?}"); // printed to 0.1 px
            }
        };
        close(&attr(&svg, "zero", "x1"), &[px(0.0)]);
        close(&attr(&svg, "ci", "x1"), &[px(-0.05), px(0.01)]);
        close(&attr(&svg, "ci", "x2"), &[px(0.05), px(0.11)]);
        close(
            &attr(&svg, "seed", "cx"),
            &[-0.02, 0.0, 0.02, 0.04, 0.06, 0.08].map(px),
        );
        close(&attr(&svg, "mean", "x"), &[px(0.0) - 4.0, px(0.06) - 4.0]);
        // Only the interval clear of zero is filled and bold.
        let fills: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains(r#"class="mean""#))
            .map(|l| {
                l.split(r#"fill=""#)
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(fills, vec!["white", PALETTE[0]]);
        assert_eq!(svg.matches(r#"font-weight="bold""#).count(), 1);
        assert!(svg.contains("+0.060 ± 0.050"));
    }

    #[test]
    fn one_seed_draws_no_interval_and_bad_values_are_skipped() {
        let rows = [
            row("a < b", &[0.03], 0.03, f64::NAN),
            row("b", &[f64::NAN, -0.01], -0.01, f64::NAN),
        ];
        let svg = forest_plot("t", "x", &rows);
        assert!(attr(&svg, "ci", "x1").is_empty());
        assert_eq!(attr(&svg, "seed", "cx").len(), 2);
        assert!(svg.contains("+0.030 (one seed)"));
        assert!(svg.contains("a &lt; b"), "labels are escaped");
        assert!(!svg.contains("NaN"));
        // No rows at all still gives a well-formed (empty) plot.
        let empty = forest_plot("t", "x", &[]);
        assert!(empty.starts_with("<svg") && empty.ends_with("</svg>\n"));
    }
}
