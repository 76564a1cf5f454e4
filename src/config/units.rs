//! The value types the file is written in: durations (`Dur`), byte sizes
//! (`Size`) and address blocks (`Cidr`), each parsed with an error that
//! says how to write it.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as "250ms", "10s", "5m", "1h" (or "0").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" if n == 0 => Duration::ZERO,
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration: write e.g. \"250ms\", \"10s\", \"5m\", \"1h\""
            ))
        })
    }
}

/// A byte size written as "64KiB", "10MiB", "1GiB" (powers of 1024), "64KB",
/// "10MB", "1GB" (powers of 1000, as SI means them), "512B" or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn get(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// Parses a size; the error says how to write it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "K" | "k" | "M" | "G" => {
            return Err(format!(
                "'{s}': a bare '{unit}' is ambiguous: write {num}{}iB (powers of 1024) or {num}{}B (powers of 1000)",
                unit.to_ascii_uppercase(),
                unit.to_ascii_uppercase()
            ));
        }
        _ => {
            return Err(format!(
                "'{s}' is not a size: write e.g. \"64KiB\", \"10MiB\", \"1GiB\", \"64KB\" or a number of bytes"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: it needs a whole number first"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: \"64KiB\", \"10MiB\", \"64KB\" or a whole number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{n} is not a size: it must not be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// An address block, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let a: std::net::IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                (u128::from(a), u128::from(b), 128)
            }
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{BASE, parse};

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }

    #[test]
    fn bad_duration_names_line() {
        let text = format!("{BASE}[timeouts]\nclient_header = \"10 parsecs\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:5: `client_header`:"), "{err}");
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn sizes_in_kib_are_1024_and_in_kb_1000() {
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("12"), Ok(12));
        assert_eq!(parse_size(" 8 KiB "), Ok(8192));
    }

    #[test]
    fn bare_k_m_g_are_refused_as_ambiguous() {
        let err = parse_size("64K").unwrap_err();
        assert!(
            err.contains("ambiguous") && err.contains("write 64KiB (powers of 1024) or 64KB"),
            "{err}"
        );
        for s in ["64k", "10M", "1G"] {
            assert!(parse_size(s).unwrap_err().contains("ambiguous"), "{s}");
        }
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for s in ["1TiB", "KiB", "1.5MiB", "-1", "64 kib", ""] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn an_ambiguous_size_in_the_file_names_its_line() {
        let text = format!("{BASE}[limits]\nmax_headers = 50\nmax_body_bytes = \"10M\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:6: `max_body_bytes`:"), "{err}");
        assert!(err.contains("write 10MiB"), "{err}");
    }
}
