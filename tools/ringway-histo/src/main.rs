//! ringway-histo: reads latency dumps from ringway, ringway-load and wrk2 —
//! HdrHistogram percentile text (`.hgrm`, values in ms) or interval logs
//! (base64 histograms, values in µs by default) — and prints, merges,
//! compares or plots them.

mod read;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use ringway::hgrm::percentile_ms;

#[derive(Parser)]
#[command(
    name = "ringway-histo",
    version,
    about = "Print, merge, compare and plot HdrHistogram latency dumps"
)]
struct Cli {
    /// Unit of the values in interval logs (`.hgrm` files are read in ms).
    #[arg(long, global = true, value_enum, default_value = "us")]
    log_unit: Unit,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Unit {
    Ns,
    Us,
    Ms,
}

#[derive(Subcommand)]
enum Command {
    /// Print the percentiles of each file.
    Show { files: Vec<PathBuf> },
    /// Merge files into one distribution, written as .hgrm.
    Merge {
        files: Vec<PathBuf>,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Files side by side against a baseline (e.g. the run straight to the
    /// origin): each one's latency, what it adds over the baseline, and the ratio.
    Compare {
        base: PathBuf,
        #[arg(required = true)]
        others: Vec<PathBuf>,
    },
    /// Plot latency by percentile (log percentile axis) of one or more files to SVG.
    Plot {
        files: Vec<PathBuf>,
        #[arg(short, long, default_value = "latency.svg")]
        output: PathBuf,
        #[arg(long, default_value = "Latency by percentile")]
        title: String,
    },
}

const ROWS: [(&str, f64); 7] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("p99.999", 99.999),
    ("max", 100.0),
];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let load =
        |p: &Path| read::load(p, cli.log_unit).with_context(|| format!("reading {}", p.display()));
    match cli.command {
        Command::Show { files } => {
            anyhow::ensure!(!files.is_empty(), "name at least one file");
            for f in &files {
                let h = load(f)?;
                println!(
                    "{}: {} values, mean {:.3}ms",
                    f.display(),
                    h.len(),
                    mean_ms(&h)
                );
                for (name, p) in ROWS {
                    println!("  {name:>8} {:>12.3} ms", percentile_ms(&h, p));
                }
            }
        }
        Command::Merge { files, output } => {
            anyhow::ensure!(!files.is_empty(), "name at least one file");
            let mut total = ringway::hgrm::latency_histogram();
            for f in &files {
                total.add(load(f)?)?;
            }
            match output {
                Some(path) => {
                    let mut out = std::fs::File::create(&path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    ringway::hgrm::write_percentiles(&total, &mut out)?;
                }
                None => ringway::hgrm::write_percentiles(&total, &mut std::io::stdout().lock())?,
            }
        }
        Command::Compare { base, others } => {
            let a = load(&base)?;
            let bs: Vec<Histogram<u64>> =
                others.iter().map(|f| load(f)).collect::<Result<_, _>>()?;
            let mut header = format!("{:>8} {:>14}", "", name(&base));
            for f in &others {
                header += &format!(" {:>14} {:>13} {:>8}", name(f), "added", "ratio");
            }
            println!("{header}");
            let line = |row: &str, x: f64, ys: Vec<f64>| {
                let mut line = format!("{row:>8} {x:>11.3} ms");
                for y in ys {
                    line += &format!(" {y:>11.3} ms {:>+10.3} ms {:>8}", y - x, ratio(x, y));
                }
                println!("{line}");
            };
            for (row, p) in ROWS {
                let ys = bs.iter().map(|b| percentile_ms(b, p)).collect();
                line(row, percentile_ms(&a, p), ys);
            }
            line("mean", mean_ms(&a), bs.iter().map(mean_ms).collect());
            let counts: Vec<String> = bs.iter().map(|b| format!("{:>14}", b.len())).collect();
            println!("{:>8} {:>14} {}", "count", a.len(), counts.join(" "));
        }
        Command::Plot {
            files,
            output,
            title,
        } => {
            anyhow::ensure!(!files.is_empty(), "name at least one file");
            let series: Vec<(String, Histogram<u64>)> = files
                .iter()
                .map(|f| Ok((name(f), load(f)?)))
                .collect::<anyhow::Result<_>>()?;
            plot(&series, &output, &title)?;
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

fn name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

fn mean_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() { 0.0 } else { h.mean() / 1000.0 }
}

fn ratio(x: f64, y: f64) -> String {
    if x > 0.0 {
        format!("{:.2}x", y / x)
    } else {
        "-".into()
    }
}

/// HdrHistogram's percentile plot: x is 1/(1-percentile) on a log axis,
/// labelled as percentiles (90%, 99%, 99.9%...), y is latency in ms.
fn plot(series: &[(String, Histogram<u64>)], output: &Path, title: &str) -> anyhow::Result<()> {
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, h)| {
            let n = h.len().max(1) as f64;
            h.iter_quantiles(5)
                .map(|v| {
                    // The last quantile is 1: place it at the resolution the count allows.
                    let q = v.quantile_iterated_to().min(1.0 - 1.0 / n);
                    (1.0 / (1.0 - q), v.value_iterated_to() as f64 / 1000.0)
                })
                .collect()
        })
        .collect();
    let x_max = curves
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(10.0f64, f64::max)
        .log10()
        .ceil();
    let y_max = curves
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.001f64, f64::max)
        * 1.1;

    let root = SVGBackend::new(output, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..10f64.powf(x_max)).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, ((label, _), curve)) in series.iter().zip(&curves).enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(
                curve.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    // 90% → 0 decimals, 99.9% → 1, 99.99% → 2: rounded, as 100 - p carries float error.
    let digits = (-(100.0 - p).log10()).round().clamp(0.0, 6.0) as usize;
    format!("{p:.digits$}%")
}

#[cfg(test)]
mod tests {
    use super::percentile_label;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(1e6), "99.9999%");
    }
}
