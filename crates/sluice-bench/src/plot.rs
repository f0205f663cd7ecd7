//! `--plot`: an SVG with two charts, throughput over time (published and consumed) and the
//! latency percentile curve on HdrHistogram's 1/(1-p) scale. Written as text: SVG needs no
//! library for lines, axes and labels.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 720.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const PUBLISHED_COLOR: &str = "#1f77b4";
const CONSUMED_COLOR: &str = "#d62728";
const LATENCY_COLOR: &str = "#2ca02c";

/// Where a chart sits in the picture.
struct Frame {
    top: f64,
    height: f64,
}

impl Frame {
    fn left(&self) -> f64 {
        LEFT
    }
    fn right(&self) -> f64 {
        WIDTH - RIGHT
    }
    fn bottom(&self) -> f64 {
        self.top + self.height
    }
    fn width(&self) -> f64 {
        self.right() - self.left()
    }
}

/// The SVG document for `report`.
pub fn svg(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = report
        .summary()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    text(&mut out, WIDTH / 2.0, 22.0, "middle", 14.0, &title);
    throughput(
        &mut out,
        report,
        &Frame {
            top: 60.0,
            height: 250.0,
        },
    );
    latency(
        &mut out,
        report,
        &Frame {
            top: 400.0,
            height: 260.0,
        },
    );
    out.push_str("</svg>\n");
    out
}

fn throughput(out: &mut String, report: &Report, frame: &Frame) {
    let series = &report.series;
    let t_max = series.last().map_or(1.0, |s| s.t_s).max(1.0);
    let y_max = series
        .iter()
        .map(|s| s.published_per_s.max(s.consumed_per_s))
        .fold(0.0, f64::max);
    let y_ticks = nice_ticks(y_max.max(1.0));
    let y_top = y_ticks.last().copied().unwrap_or(1.0);
    let x = |t: f64| frame.left() + t / t_max * frame.width();
    let y = |v: f64| frame.bottom() - v / y_top * frame.height;

    text(
        out,
        frame.left(),
        frame.top - 12.0,
        "start",
        13.0,
        "Throughput (msg/s)",
    );
    for &tick in &y_ticks {
        grid_line(out, frame.left(), y(tick), frame.right(), y(tick));
        text(
            out,
            frame.left() - 6.0,
            y(tick) + 4.0,
            "end",
            11.0,
            &si(tick),
        );
    }
    for tick in nice_ticks(t_max) {
        if tick <= t_max {
            text(
                out,
                x(tick),
                frame.bottom() + 16.0,
                "middle",
                11.0,
                &si(tick),
            );
        }
    }
    text(
        out,
        frame.left() + frame.width() / 2.0,
        frame.bottom() + 34.0,
        "middle",
        12.0,
        "seconds since start",
    );
    axes(out, frame);
    let published: Vec<(f64, f64)> = series
        .iter()
        .map(|s| (x(s.t_s), y(s.published_per_s)))
        .collect();
    let consumed: Vec<(f64, f64)> = series
        .iter()
        .map(|s| (x(s.t_s), y(s.consumed_per_s)))
        .collect();
    polyline(out, &published, PUBLISHED_COLOR, "");
    // Dashed, so that the published line shows through where the two coincide.
    polyline(out, &consumed, CONSUMED_COLOR, r#" stroke-dasharray="6 4""#);
    legend(
        out,
        frame.right() - 160.0,
        frame.top - 16.0,
        &[("published", PUBLISHED_COLOR), ("consumed", CONSUMED_COLOR)],
    );
}

fn latency(out: &mut String, report: &Report, frame: &Frame) {
    // x: log10(1 / (1 - p)), so 90% is 1, 99% is 2, ...; the maximum sits one step past
    // the last percentile.
    const X_MAX: f64 = 6.0;
    let x_of = |percentile: f64| {
        let rest = 1.0 - percentile / 100.0;
        if rest <= 0.0 {
            X_MAX
        } else {
            (1.0 / rest).log10().min(X_MAX)
        }
    };
    let curve = &report.latency.curve;
    let (lo, hi) = curve.iter().fold((f64::MAX, 0.0f64), |(lo, hi), p| {
        (lo.min(p.latency_us.max(0.1)), hi.max(p.latency_us))
    });
    let decade_lo = if curve.is_empty() {
        0.0
    } else {
        lo.log10().floor()
    };
    let decade_hi = (hi.max(1.0).log10().ceil()).max(decade_lo + 1.0);
    let x = |v: f64| frame.left() + v / X_MAX * frame.width();
    let y = |us: f64| {
        let d = us.max(0.1).log10();
        frame.bottom() - (d - decade_lo) / (decade_hi - decade_lo) * frame.height
    };

    text(
        out,
        frame.left(),
        frame.top - 12.0,
        "start",
        13.0,
        &format!(
            "Publish→deliver latency (µs, log scale): p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            report.latency.p50_us,
            report.latency.p99_us,
            report.latency.p999_us,
            report.latency.max_us
        ),
    );
    let mut decade = decade_lo;
    while decade <= decade_hi {
        let value = 10f64.powf(decade);
        grid_line(out, frame.left(), y(value), frame.right(), y(value));
        text(
            out,
            frame.left() - 6.0,
            y(value) + 4.0,
            "end",
            11.0,
            &si(value),
        );
        decade += 1.0;
    }
    for (position, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
        (6.0, "max"),
    ] {
        grid_line(out, x(position), frame.top, x(position), frame.bottom());
        text(
            out,
            x(position),
            frame.bottom() + 16.0,
            "middle",
            11.0,
            label,
        );
    }
    text(
        out,
        frame.left() + frame.width() / 2.0,
        frame.bottom() + 34.0,
        "middle",
        12.0,
        "percentile",
    );
    axes(out, frame);
    let points: Vec<(f64, f64)> = curve
        .iter()
        .map(|p| (x(x_of(p.percentile)), y(p.latency_us)))
        .collect();
    polyline(out, &points, LATENCY_COLOR, "");
}

fn axes(out: &mut String, frame: &Frame) {
    let _ = writeln!(
        out,
        r#"<polyline points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="none" stroke="black"/>"#,
        frame.left(),
        frame.top,
        frame.left(),
        frame.bottom(),
        frame.right(),
        frame.bottom()
    );
}

fn grid_line(out: &mut String, x1: f64, y1: f64, x2: f64, y2: f64) {
    let _ = writeln!(
        out,
        r##"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="#ddd"/>"##
    );
}

fn polyline(out: &mut String, points: &[(f64, f64)], color: &str, extra: &str) {
    if points.is_empty() {
        return;
    }
    let mut coordinates = String::new();
    for (x, y) in points {
        let _ = write!(coordinates, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{extra}/>"#,
        coordinates.trim_end()
    );
}

fn legend(out: &mut String, x: f64, y: f64, entries: &[(&str, &str)]) {
    for (i, (label, color)) in entries.iter().enumerate() {
        let left = x + i as f64 * 85.0;
        let _ = writeln!(
            out,
            r#"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#,
            left + 18.0
        );
        text(out, left + 22.0, y + 4.0, "start", 11.0, label);
    }
}

fn text(out: &mut String, x: f64, y: f64, anchor: &str, size: f64, content: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{}</text>"#,
        escape(content)
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Ticks from 0 to at least `max`, 1, 2 or 5 times a power of ten apart, about five of them.
fn nice_ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// 150000 as "150k", 2500000 as "2.5M".
fn si(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled >= 10.0 || scaled.fract() == 0.0 {
        format!("{scaled:.0}")
    } else if scaled >= 1.0 {
        format!("{scaled:.1}")
    } else {
        let fixed = format!("{scaled:.3}");
        fixed
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(nice_ticks(95_000.0).last().copied(), Some(100_000.0));
        assert_eq!(nice_ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0).len(), 6);
    }

    #[test]
    fn large_numbers_get_si_suffixes() {
        assert_eq!(si(150_000.0), "150k");
        assert_eq!(si(2_500_000.0), "2.5M");
        assert_eq!(si(100.0), "100");
        assert_eq!(si(0.1), "0.1");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
