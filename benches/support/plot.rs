//! The growth plot: RSS, CPU and p99 poll latency of the operator against the trigger
//! count, drawn from the CSV the scale run appends to (`--record`).

use std::path::Path;

use plotters::prelude::*;

struct Row {
    triggers: f64,
    mix: String,
    rss: f64,
    cpu: f64,
    p99: f64,
}

fn rows(csv: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(csv)
        .map_err(|e| anyhow::anyhow!("--plot: reading {}: {e}", csv.display()))?;
    let mut out = Vec::new();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        head.iter()
            .position(|h| *h == name)
            .ok_or_else(|| anyhow::anyhow!("{}: no column {name}", csv.display()))
    };
    let (t, m, r, c, p) = (
        col("triggers")?,
        col("mix")?,
        col("rss_mib")?,
        col("cpu_mcpu")?,
        col("p99_ms")?,
    );
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| -> anyhow::Result<f64> {
            f.get(i)
                .ok_or_else(|| anyhow::anyhow!("{}: short line `{line}`", csv.display()))?
                .parse::<f64>()
                .map_err(|e| anyhow::anyhow!("{}: `{line}`: {e}", csv.display()))
        };
        out.push(Row {
            triggers: num(t)?,
            mix: f.get(m).unwrap_or(&"").to_string(),
            rss: num(r)?,
            cpu: num(c)?,
            p99: num(p)?,
        });
    }
    out.sort_by(|a, b| a.triggers.total_cmp(&b.triggers));
    Ok(out)
}

/// Three panels side by side, one line per mix, against the trigger count.
pub fn growth(csv: &Path, svg: &Path) -> anyhow::Result<()> {
    let rows = rows(csv)?;
    anyhow::ensure!(!rows.is_empty(), "{}: no rows", csv.display());
    let mut mixes: Vec<String> = rows.iter().map(|r| r.mix.clone()).collect();
    mixes.sort();
    mixes.dedup();
    let root = SVGBackend::new(svg, (1200, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let xmax = rows.iter().map(|r| r.triggers).fold(0.0, f64::max) * 1.05;
    type Pick = fn(&Row) -> f64;
    let series: [(&str, Pick); 3] = [
        ("operator RSS, MiB", |r| r.rss),
        ("operator CPU, mCPU", |r| r.cpu),
        ("poll latency p99, ms", |r| r.p99),
    ];
    for (area, (title, pick)) in panels.iter().zip(series) {
        let ymax = rows.iter().map(pick).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax.max(1e-9))?;
        chart
            .configure_mesh()
            .x_desc("triggers (30 s interval)")
            .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
            .draw()?;
        for (i, mix) in mixes.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.mix == mix)
                .map(|r| (r.triggers, pick(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(mix.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()
        .map_err(|e| anyhow::anyhow!("--plot: writing {}: {e}", svg.display()))?;
    Ok(())
}
