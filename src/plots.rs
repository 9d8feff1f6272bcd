//! The report's pictures, as SVG text (feature `plots`): training curves, the confusion matrix as
//! a heat map, the reliability diagram, and the novelty histograms of known and unknown images.
//! Drawn with `plotters`' SVG backend only: text stays SVG `<text>`, so no font library is
//! linked. Each chart names its series in a legend, which is what the tests look for.

use plotters::prelude::*;
use thiserror::Error;

use crate::confidence::Bin;
use crate::head::EpochStats;

#[derive(Debug, Error)]
#[error("drawing {plot}: {reason}")]
pub struct PlotError {
    plot: &'static str,
    reason: String,
}

fn fail<E: std::fmt::Display>(plot: &'static str) -> impl Fn(E) -> PlotError {
    move |e| PlotError {
        plot,
        reason: e.to_string(),
    }
}

const SIZE: (u32, u32) = (720, 420);
const FONT: (&str, u32) = ("sans-serif", 18);

fn legend(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// A chart builder with the report's caption font, margin and axis label room.
fn framed<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, FONT)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50);
    builder
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf32, plotters::coord::types::RangedCoordf32>,
>;

/// A black vertical line at `x`, from the axis to `top`, named `label` in the legend.
fn vertical_marker(
    chart: &mut Chart,
    plot: &'static str,
    (x, top): (f32, f32),
    width: u32,
    label: String,
) -> Result<(), PlotError> {
    chart
        .draw_series(LineSeries::new(
            [(x, 0.0), (x, top)],
            BLACK.stroke_width(width),
        ))
        .map_err(fail(plot))?
        .label(label)
        .legend(legend(BLACK));
    Ok(())
}

/// The legend box, at `position`, over a light background.
fn draw_legend<'a, 'b: 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    plot: &'static str,
    position: SeriesLabelPosition,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(fail(plot))
}

/// Loss and accuracy per epoch, training and validation, with the best epoch marked.
pub fn training(history: &[EpochStats], best_epoch: usize) -> Result<String, PlotError> {
    const P: &str = "training curves";
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0 * 2, SIZE.1)).into_drawing_area();
        root.fill(&WHITE).map_err(fail(P))?;
        let panels = root.split_evenly((1, 2));
        let epochs = history.len().max(1) as f32;
        type Get = fn(&EpochStats) -> Option<f32>;
        let charts: [(&str, Get, Get); 2] = [
            ("loss", |e| Some(e.train_loss), |e| e.val_loss),
            ("accuracy", |e| Some(e.train_accuracy), |e| e.val_accuracy),
        ];
        for (area, (name, train, val)) in panels.iter().zip(charts) {
            let top = history
                .iter()
                .flat_map(|e| [train(e), val(e)])
                .flatten()
                .fold(0f32, f32::max)
                .max(1e-3)
                * 1.05;
            let mut chart = framed(area, &format!("{name} per epoch"))
                .build_cartesian_2d(1f32..epochs.max(2.0), 0f32..top)
                .map_err(fail(P))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(name)
                .draw()
                .map_err(fail(P))?;
            let series = |get: Get| -> Vec<(f32, f32)> {
                history
                    .iter()
                    .filter_map(|e| get(e).map(|v| (e.epoch as f32, v)))
                    .collect()
            };
            for (label, get, color) in [("train", train, BLUE), ("validation", val, RED)] {
                let points = series(get);
                if points.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(fail(P))?
                    .label(format!("{label} {name}"))
                    .legend(legend(color));
            }
            let best = (best_epoch as f32, top);
            vertical_marker(&mut chart, P, best, 1, format!("best epoch {best_epoch}"))?;
            draw_legend(&mut chart, P, SeriesLabelPosition::MiddleRight)?;
        }
        root.present().map_err(fail(P))?;
    }
    Ok(svg)
}

/// The confusion matrix as a heat map: each cell's shade is its share of the actual class's row.
pub fn confusion(classes: &[String], matrix: &[Vec<usize>]) -> Result<String, PlotError> {
    const P: &str = "confusion matrix";
    let n = classes.len() as i32;
    let mut svg = String::new();
    {
        let side = (160 + 48 * n.max(2)) as u32;
        let root = SVGBackend::with_string(&mut svg, (side + 60, side)).into_drawing_area();
        root.fill(&WHITE).map_err(fail(P))?;
        let name = |v: &i32| {
            classes
                .get(*v as usize)
                .map_or(String::new(), |c| c.chars().take(12).collect())
        };
        let mut chart = ChartBuilder::on(&root)
            .caption("confusion matrix (rows: actual, columns: predicted)", FONT)
            .margin(12)
            .x_label_area_size(90)
            .y_label_area_size(110)
            .build_cartesian_2d(0i32..n, n..0i32)
            .map_err(fail(P))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n as usize)
            .y_labels(n as usize)
            .x_label_formatter(&name)
            .y_label_formatter(&name)
            .x_desc("predicted")
            .y_desc("actual")
            .draw()
            .map_err(fail(P))?;
        let cells = matrix.iter().enumerate().flat_map(|(i, row)| {
            let total = row.iter().sum::<usize>().max(1) as f64;
            row.iter().enumerate().map(move |(j, &k)| {
                let share = k as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                Rectangle::new(
                    [(j as i32, i as i32), (j as i32 + 1, i as i32 + 1)],
                    RGBColor(shade, shade, 255).filled(),
                )
            })
        });
        chart
            .draw_series(cells)
            .map_err(fail(P))?
            .label("share of the actual class")
            .legend(legend(BLUE));
        let counts = matrix.iter().enumerate().flat_map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(move |(j, &k)| Text::new(k.to_string(), (j as i32, i as i32), FONT))
        });
        chart.draw_series(counts).map_err(fail(P))?;
        root.present().map_err(fail(P))?;
    }
    Ok(svg)
}

/// Accuracy against confidence per bin, before and after temperature scaling.
pub fn reliability(before: &[Bin], after: &[Bin], temperature: f32) -> Result<String, PlotError> {
    const P: &str = "reliability diagram";
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(fail(P))?;
        let mut chart = framed(&root, "reliability diagram (test split)")
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(fail(P))?;
        chart
            .configure_mesh()
            .x_desc("confidence")
            .y_desc("accuracy")
            .draw()
            .map_err(fail(P))?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.5)))
            .map_err(fail(P))?
            .label("perfect calibration")
            .legend(legend(BLACK));
        let points = |bins: &[Bin]| -> Vec<(f64, f64)> {
            bins.iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.confidence, b.accuracy))
                .collect()
        };
        for (label, bins, color) in [
            ("before (temperature 1)".to_string(), before, RED),
            (format!("after (temperature {temperature:.2})"), after, BLUE),
        ] {
            chart
                .draw_series(LineSeries::new(points(bins), color.stroke_width(2)).point_size(4))
                .map_err(fail(P))?
                .label(label)
                .legend(legend(color));
        }
        draw_legend(&mut chart, P, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(fail(P))?;
    }
    Ok(svg)
}

/// Histograms of the novelty score of known (test) and unknown images, and the threshold.
pub fn novelty(known: &[f32], unknown: &[f32], threshold: f32) -> Result<String, PlotError> {
    const P: &str = "novelty histograms";
    const BINS: usize = 40;
    let max = known
        .iter()
        .chain(unknown)
        .fold(threshold, |m, &v| m.max(v))
        .max(1e-3)
        * 1.02;
    let width = max / BINS as f32;
    let shares = |scores: &[f32]| -> Vec<f32> {
        let mut h = vec![0f32; BINS];
        for &s in scores {
            h[((s / width) as usize).min(BINS - 1)] += 1.0 / scores.len().max(1) as f32;
        }
        h
    };
    let (hk, hu) = (shares(known), shares(unknown));
    let top = hk.iter().chain(&hu).fold(0f32, |m, &v| m.max(v)).max(1e-3) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(fail(P))?;
        let mut chart = framed(&root, "novelty: known test images vs unknown images")
            .build_cartesian_2d(0f32..max, 0f32..top)
            .map_err(fail(P))?;
        chart
            .configure_mesh()
            .x_desc("novelty (1 - cosine similarity to the nearest training image)")
            .y_desc("share of images")
            .draw()
            .map_err(fail(P))?;
        for (label, h, color) in [
            (format!("known ({})", known.len()), &hk, BLUE),
            (format!("unknown ({})", unknown.len()), &hu, RED),
        ] {
            let bars = h.iter().enumerate().map(|(i, &v)| {
                let x = i as f32 * width;
                Rectangle::new([(x, 0.0), (x + width, v)], color.mix(0.45).filled())
            });
            chart
                .draw_series(bars)
                .map_err(fail(P))?
                .label(label)
                .legend(legend(color));
        }
        let label = format!("threshold {threshold:.4}");
        vertical_marker(&mut chart, P, (threshold, top), 2, label)?;
        draw_legend(&mut chart, P, SeriesLabelPosition::MiddleRight)?;
        root.present().map_err(fail(P))?;
    }
    Ok(svg)
}
