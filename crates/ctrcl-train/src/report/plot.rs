//! Line plots as standalone SVG (no plotting dependency): training curves for `ctrcl report`.

use std::fmt::Write as _;

/// Colours that stay distinguishable for colour-blind readers (Okabe–Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// One line of a plot; points with a non-finite coordinate are skipped (gaps are not drawn).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Width of the plot area; the legend to its right is as wide as its longest name.
const PLOT_WIDTH: f64 = 480.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 50.0;

/// About `n` round tick values covering `[lo, hi]` (1, 2, 5 × 10^k steps).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Tick values of a log10 axis spanning `[lo, hi]` (in log10 units): the decades, or 1, 2, 5 ×
/// each decade when fewer than three decades fall inside.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades: Vec<f64> = (lo.ceil() as i64..=hi.floor() as i64)
        .map(|d| d as f64)
        .collect();
    if decades.len() >= 3 {
        return decades;
    }
    (lo.floor() as i64..=hi.ceil() as i64)
        .flat_map(|d| [1.0f64, 2.0, 5.0].map(|m| d as f64 + m.log10()))
        .filter(|t| (lo..=hi).contains(t))
        .collect()
}

pub(crate) fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The opening of a standalone SVG `width` × `height`: the element, a white background and
/// `title` centred at `title_x`.
pub(crate) fn svg_start(width: f64, height: f64, title_x: f64, title: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{title_x:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        escape(title)
    );
    svg
}

/// Vertical grid lines at round values of `[x0, x1]` across a plot area from `top` down `ph`
/// pixels, each labelled below it; `px` maps a value to its pixel column.
pub(crate) fn x_grid(
    svg: &mut String,
    (x0, x1): (f64, f64),
    px: impl Fn(f64) -> f64,
    top: f64,
    ph: f64,
) {
    for t in ticks(x0, x1, 6) {
        let x = px(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            label(t)
        );
    }
}

/// An SVG line plot of `series` with axes, ticks, labels and a legend. `log_y` plots log10 of
/// positive values (non-positive points are skipped).
pub fn line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
        .map(|(x, y)| (x, ty(y)))
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = finite.iter().fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    if finite.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = 0.05 * (y1 - y0);
    (y0, y1) = (y0 - pad, y1 + pad);
    let longest = series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let legend = 50.0 + 7.5 * longest as f64;
    let width = (LEFT + PLOT_WIDTH + legend).round();
    let (pw, ph) = (PLOT_WIDTH, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * ph;

    let mut svg = svg_start(width, HEIGHT, LEFT + pw / 2.0, title);
    x_grid(&mut svg, (x0, x1), px, TOP, ph);
    let y_ticks = if log_y {
        log_ticks(y0, y1)
    } else {
        ticks(y0, y1, 5)
    };
    for t in y_ticks {
        let y = py(t);
        let text = if log_y {
            label(10f64.powf(t))
        } else {
            label(t)
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{text}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 10.0,
        escape(x_label)
    );
    let y_text = if log_y {
        format!("{y_label} (log scale)")
    } else {
        y_label.to_string()
    };
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(&y_text)
    );
    // Lines (a point marker too, so single-point series show) and the legend.
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|&&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
            .map(|&(x, y)| (px(x), py(ty(y))))
            .collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
        }
        if pts.len() <= 30 {
            for (x, y) in &pts {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{colour}"/>"#
                );
            }
        }
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2.5"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let close = |got: Vec<f64>, want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{got:?}");
            assert!(
                got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12),
                "{got:?}"
            );
        };
        // (hi − lo)/n rounded up to 1, 2 or 5 × 10^k; multiples of the step inside the range.
        close(
            ticks(0.0, 600.0, 6),
            &[0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0],
        );
        close(ticks(0.21, 0.87, 5), &[0.4, 0.6, 0.8]);
        close(ticks(0.0013, 0.0102, 4), &[0.005, 0.01]);
        close(ticks(2.0, 2.0, 5), &[2.0]);
    }

    #[test]
    fn log_ticks_are_decades_or_1_2_5() {
        assert_eq!(log_ticks(-5.2, -1.9), vec![-5.0, -4.0, -3.0, -2.0]);
        let t: Vec<f64> = log_ticks(-1.6, -0.1)
            .iter()
            .map(|t| 10f64.powf(*t))
            .collect();
        let want = [0.05, 0.1, 0.2, 0.5];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
    }

    #[test]
    fn points_map_into_the_plot_area_and_bad_points_are_skipped() {
        let s = Series {
            name: "cnn <val>".into(),
            points: vec![(0.0, 0.5), (100.0, f64::NAN), (200.0, 1.0)],
        };
        let svg = line_plot("t", "step", "Dice", &[s], false);
        // Two finite points → one polyline with two vertices, at the plot's left and right edges.
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let pts = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>");
        let xs: Vec<f64> = pts
            .split(' ')
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(xs, vec![LEFT, LEFT + PLOT_WIDTH]);
        assert!(svg.contains("cnn &lt;val&gt;"), "legend text is escaped");
        // Log scale drops the non-positive point instead of failing.
        let svg = line_plot(
            "t",
            "step",
            "loss",
            &[Series {
                name: "a".into(),
                points: vec![(0.0, 0.0), (1.0, 0.1), (2.0, 1.0)],
            }],
            true,
        );
        assert!(svg.contains("(log scale)"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
