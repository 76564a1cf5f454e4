//! The built ringway-histo over files written by ringway's own writers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringway-histo-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Values 1..=n ms, as .hgrm.
fn hgrm(path: &Path, n: u64, scale: u64) {
    let mut h = ringway::hgrm::latency_histogram();
    for v in 1..=n {
        h.record(v * 1000 * scale).unwrap();
    }
    let mut f = std::fs::File::create(path).unwrap();
    ringway::hgrm::write_percentiles(&h, &mut f).unwrap();
}

fn histo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-histo"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn row(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} row in {text}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn show_compare_merge_and_plot() {
    let d = dir();
    let (a, b) = (d.join("a.hgrm"), d.join("b.hgrm"));
    hgrm(&a, 1000, 1);
    hgrm(&b, 1000, 2);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let shown = histo(&["show", a]);
    assert_eq!(row(&shown, "p50")[1], "500.223", "{shown}");

    let compared = histo(&["compare", a, b]);
    assert_eq!(row(&compared, "p99").last().unwrap(), "2.00x", "{compared}");
    assert_eq!(row(&compared, "count")[1..], ["1000", "1000"]);

    // Against a baseline: each file's value, what it adds, and the ratio.
    let compared = histo(&["compare", a, b, a]);
    let p50 = row(&compared, "p50");
    assert_eq!(
        p50[1..],
        [
            "500.223", "ms", "1000.447", "ms", "+500.224", "ms", "2.00x", "500.223", "ms",
            "+0.000", "ms", "1.00x"
        ],
        "{compared}"
    );
    assert_eq!(row(&compared, "count")[1..], ["1000", "1000", "1000"]);

    let merged = d.join("m.hgrm");
    histo(&["merge", a, b, "-o", merged.to_str().unwrap()]);
    let shown = histo(&["show", merged.to_str().unwrap()]);
    assert!(shown.contains("2000 values"), "{shown}");

    let svg = d.join("p.svg");
    let out = histo(&["plot", a, b, "-o", svg.to_str().unwrap(), "--title", "t"]);
    assert!(out.contains("wrote"));
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("a.hgrm") && svg.contains("99.9%"),
        "{}",
        &svg[..200]
    );
    for color in ["#FF0000", "#0000FF"] {
        let curve = format!("stroke=\"{color}\" stroke-width=\"2\"");
        assert_eq!(
            svg.matches(&curve).count(),
            2,
            "a curve and its legend mark in {color}"
        );
    }
}

#[test]
fn reads_interval_logs() {
    let d = dir();
    let path = d.join("l.hlog");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut ser = V2Serializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .with_start_time(std::time::SystemTime::now())
        .begin_log_with(&mut f, &mut ser)
        .unwrap();
    for second in 0..3u64 {
        let mut h = ringway::hgrm::latency_histogram();
        for v in 1..=100u64 {
            h.record(v * 100).unwrap(); // µs
        }
        log.write_histogram(
            &h,
            Duration::from_secs(second),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
    }
    drop(log);
    let shown = histo(&["show", path.to_str().unwrap()]);
    assert!(shown.contains("300 values"), "{shown}");
    assert_eq!(row(&shown, "max")[1], "10.007", "{shown}");
}

#[test]
fn unreadable_input_is_an_error_not_a_panic() {
    let d = dir();
    let junk = d.join("junk.hgrm");
    std::fs::write(&junk, "this is not a histogram\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-histo"))
        .args(["show", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no percentile rows"));
}
