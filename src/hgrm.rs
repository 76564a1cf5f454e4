//! Latency histograms and HdrHistogram's percentile-distribution text
//! (`.hgrm`), the format HdrHistogram's plotter, wrk2 and `ringway-histo`
//! read. Values are recorded in microseconds and written in milliseconds.
#![forbid(unsafe_code)]

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// 1 µs to 1 hour at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// The value at percentile `p` (100 is the maximum) in milliseconds; 0 if empty.
pub fn percentile_ms(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let v = if p >= 100.0 {
        h.max()
    } else {
        h.value_at_percentile(p)
    };
    v as f64 / 1000.0
}

/// Writes the percentile distribution with 5 ticks per half distance, as
/// `outputPercentileDistribution(out, 1000.0)` does for microsecond values.
pub fn write_percentiles(h: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    const SCALE: f64 = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        // As HdrHistogram computes it: the power of two above 2 * 10^digits.
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_text_has_rows_and_footer() {
        let mut h = latency_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let mut out = Vec::new();
        write_percentiles(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"),
            "{text}"
        );
        // 10 ms is stored as its bucket's highest equivalent value, 10.007.
        assert!(
            text.contains("#[Buckets =           22, SubBuckets     =         2048]"),
            "{text}"
        );
        assert!(
            text.contains("#[Max     =       10.007, Total count    =         1000]"),
            "{text}"
        );
        let last_row = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(last_row.contains("1.000000000000       1000"), "{last_row}");
    }
}
