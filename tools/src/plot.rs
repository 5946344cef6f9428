//! SVG plots of a trace ([`crate::trace`]): bytes resident in each location
//! over time, and migration throughput per direction over time.

use std::collections::BTreeMap;

use plotters::prelude::*;
use serde_json::Value;

/// Time bins of the throughput plot.
const BINS: usize = 100;

/// What the plots show, taken from a trace.
#[derive(Debug, Default, PartialEq)]
pub struct Series {
    /// Per location (`system`, `dev0`, …): (ms, MiB resident), in time order.
    pub resident_mib: BTreeMap<String, Vec<(f64, f64)>>,
    /// Per direction (`system→dev0`, …): (bin start ms, GB/s).
    pub throughput_gbps: BTreeMap<String, Vec<(f64, f64)>>,
    /// The end of the trace, ms.
    pub end_ms: f64,
}

/// Why a trace could not be plotted.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("not a trace: {0} (expected the JSON `svmem ... --trace FILE` writes)")]
    NotATrace(String),
    #[error("the trace has no residency counters and no migrations: nothing to plot")]
    Empty,
    #[error("drawing the SVG failed: {0}")]
    Draw(String),
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

impl Series {
    /// Reads the counters and migration spans of a Chrome trace.
    pub fn from_trace(trace: &Value) -> Result<Series, PlotError> {
        let events = trace
            .get("traceEvents")
            .and_then(Value::as_array)
            .ok_or_else(|| PlotError::NotATrace("no `traceEvents` array".into()))?;
        let mut s = Series::default();
        // Migrations as (start µs, end µs, bytes) per direction.
        let mut moves: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        let mut end_us: f64 = 0.0;
        for e in events {
            let ph = e.get("ph").and_then(Value::as_str).unwrap_or("");
            let Some(ts) = num(e, "ts") else { continue };
            let dur = num(e, "dur").unwrap_or(0.0);
            end_us = end_us.max(ts + dur);
            let args = e.get("args");
            match ph {
                "C" if e.get("name").and_then(Value::as_str) == Some("resident bytes") => {
                    let Some(Value::Object(m)) = args else {
                        continue;
                    };
                    for (k, v) in m {
                        if let Some(b) = v.as_f64() {
                            s.resident_mib
                                .entry(k.clone())
                                .or_default()
                                .push((ts / 1e3, b / (1u64 << 20) as f64));
                        }
                    }
                }
                "X" if e.get("cat").and_then(Value::as_str) == Some("migration") => {
                    let Some(a) = args else { continue };
                    let (Some(from), Some(to)) = (
                        a.get("from").and_then(Value::as_str),
                        a.get("to").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    if from == to {
                        continue; // a first-touch fault window: nothing moved
                    }
                    let bytes = num(a, "migrated_bytes").unwrap_or(0.0);
                    moves
                        .entry(format!("{from}→{to}"))
                        .or_default()
                        .push((ts, ts + dur, bytes));
                }
                _ => {}
            }
        }
        if s.resident_mib.is_empty() && moves.is_empty() {
            return Err(PlotError::Empty);
        }
        for v in s.resident_mib.values_mut() {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        s.end_ms = end_us / 1e3;
        let width_us = (end_us / BINS as f64).max(1.0);
        for (dir, spans) in moves {
            let mut bins = vec![0.0f64; BINS];
            for (a, b, bytes) in spans {
                if b <= a {
                    // An instant migration: all its bytes in its bin.
                    let i = ((a / width_us) as usize).min(BINS - 1);
                    bins[i] += bytes;
                    continue;
                }
                // Spread the bytes evenly over the span's bins.
                let first = ((a / width_us) as usize).min(BINS - 1);
                let last = ((b / width_us) as usize).min(BINS - 1);
                for (i, bin) in bins.iter_mut().enumerate().take(last + 1).skip(first) {
                    let lo = (i as f64 * width_us).max(a);
                    let hi = ((i + 1) as f64 * width_us).min(b);
                    if hi > lo {
                        *bin += bytes * (hi - lo) / (b - a);
                    }
                }
            }
            let secs = width_us / 1e6;
            s.throughput_gbps.insert(
                dir,
                bins.iter()
                    .enumerate()
                    .map(|(i, b)| (i as f64 * width_us / 1e3, b / secs / 1e9))
                    .collect(),
            );
        }
        Ok(s)
    }
}

/// Draws `s` as an SVG document: resident MiB per location above, migration
/// GB/s per direction below, time in ms across.
pub fn svg(s: &Series, title: &str) -> Result<String, PlotError> {
    let mut out = String::new();
    draw(s, title, &mut out).map_err(|e| PlotError::Draw(e.to_string()))?;
    Ok(out)
}

fn draw(s: &Series, title: &str, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(340);
    let x_end = s.end_ms.max(1e-3);
    // Counters are steps: each value holds until the next.
    let steps = s.resident_mib.iter().map(|(loc, pts)| {
        let mut step = Vec::with_capacity(pts.len() * 2 + 1);
        for w in pts.windows(2) {
            step.push(w[0]);
            step.push((w[1].0, w[0].1));
        }
        if let Some(&last) = pts.last() {
            step.push(last);
            step.push((x_end, last.1));
        }
        (loc.as_str(), step)
    });
    let rates = s
        .throughput_gbps
        .iter()
        .map(|(dir, pts)| (dir.as_str(), pts.clone()));
    panel(&top, "resident bytes", "MiB", x_end, 1.0, 0, steps)?;
    let first_color = s.resident_mib.len();
    panel(
        &bottom,
        "migration throughput",
        "GB/s",
        x_end,
        0.1,
        first_color,
        rates,
    )?;
    root.present()?;
    Ok(())
}

/// One chart of named series over time (ms), y from 0 to 10 % above the
/// highest point (at least `y_floor`), with a legend; colours from the
/// palette starting at `first_color`.
fn panel<'a, DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    x_end: f64,
    y_floor: f64,
    first_color: usize,
    series: impl Iterator<Item = (&'a str, Vec<(f64, f64)>)>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let series: Vec<_> = series.collect();
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(y_floor)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (ms)")
        .y_desc(y_desc)
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(first_color + i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trace() -> Value {
        json!({"traceEvents": [
            {"ph": "C", "name": "resident bytes", "pid": 1, "tid": 0, "ts": 0.0,
             "args": {"system": 2 << 20, "dev0": 0}},
            {"ph": "X", "cat": "migration", "name": "migrate", "pid": 1, "tid": 1,
             "ts": 0.0, "dur": 1000.0,
             "args": {"from": "system", "to": "dev0", "migrated_bytes": 2 << 20}},
            {"ph": "C", "name": "resident bytes", "pid": 1, "tid": 0, "ts": 1000.0,
             "args": {"system": 0, "dev0": 2 << 20}},
        ]})
    }

    #[test]
    fn series_come_from_counters_and_migrations() {
        let s = Series::from_trace(&trace()).unwrap();
        assert_eq!(s.resident_mib["system"], [(0.0, 2.0), (1.0, 0.0)]);
        assert_eq!(s.resident_mib["dev0"], [(0.0, 0.0), (1.0, 2.0)]);
        let tp = &s.throughput_gbps["system→dev0"];
        assert_eq!(tp.len(), BINS);
        // 2 MiB over 1 ms, spread evenly: about 2.1 GB/s in every bin.
        let gb = (2 << 20) as f64 / 1e-3 / 1e9;
        assert!(tp.iter().all(|p| (p.1 - gb).abs() < 1e-6), "{tp:?}");
        assert_eq!(s.end_ms, 1.0);
    }

    #[test]
    fn svg_names_every_series() {
        let s = Series::from_trace(&trace()).unwrap();
        let svg = svg(&s, "t").unwrap();
        for want in ["system", "dev0", "system→dev0"] {
            assert!(svg.lines().any(|l| l.trim() == want), "{want}");
        }
    }

    #[test]
    fn not_a_trace_is_refused() {
        assert!(matches!(
            Series::from_trace(&json!({"x": 1})),
            Err(PlotError::NotATrace(_))
        ));
        assert!(matches!(
            Series::from_trace(&json!({"traceEvents": []})),
            Err(PlotError::Empty)
        ));
    }
}
