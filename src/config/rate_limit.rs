//! `[rate_limit]`: the token-bucket rates, what a client is keyed by, and
//! which peers are trusted to name the client.

use std::time::Duration;

use serde::Deserialize;

use super::{Cidr, ConfigError, ConfigValidator, Dur};

/// `rate` tokens a second, fractions allowed, and `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub rate: f64,
    pub burst: u32,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub key: LimitKey,
    pub per_client: Option<Rate>,
    pub global: Option<Rate>,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Keys each shard keeps at most.
    pub max_entries: usize,
    pub idle_eviction: Duration,
    /// Also send the IETF draft `RateLimit-Policy` and `RateLimit` headers.
    pub draft_headers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    /// The value of this request header (lower-case name).
    Header(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub(super) struct FileRateLimit {
    key: String,
    per_client: Option<Rate>,
    global: Option<Rate>,
    trusted_proxies: Vec<String>,
    max_entries: usize,
    idle_eviction: Dur,
    draft_headers: bool,
}

impl Default for FileRateLimit {
    fn default() -> Self {
        FileRateLimit {
            key: "client-ip".into(),
            per_client: None,
            global: None,
            trusted_proxies: Vec::new(),
            max_entries: 100_000,
            idle_eviction: Dur::secs(60),
            draft_headers: false,
        }
    }
}

impl ConfigValidator<'_> {
    pub(super) fn rate_limit(&self, f: &FileRateLimit) -> Result<RateLimit, ConfigError> {
        let key = match f.key.as_str() {
            "client-ip" => LimitKey::ClientIp,
            k => match k.strip_prefix("header:") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    LimitKey::Header(name.to_ascii_lowercase())
                }
                _ => {
                    return Err(self.error(
                        "rate_limit.key",
                        format!("'{k}': use \"client-ip\" or \"header:NAME\""),
                    ));
                }
            },
        };
        for (which, rate) in [("per_client", &f.per_client), ("global", &f.global)] {
            if let Some(r) = rate {
                self.check_rate(&format!("rate_limit.{which}"), r)?;
            }
        }
        let mut trusted = Vec::new();
        for (i, c) in f.trusted_proxies.iter().enumerate() {
            trusted.push(Cidr::parse(c).ok_or_else(|| {
                self.error(
                    &format!("rate_limit.trusted_proxies.{i}"),
                    format!("'{c}' is not an address or CIDR block (10.0.0.0/8, fd00::/8)"),
                )
            })?);
        }
        if f.max_entries == 0 {
            return Err(self.error("rate_limit.max_entries", "must be at least 1"));
        }
        if f.idle_eviction.0 < Duration::from_secs(1) {
            return Err(self.error("rate_limit.idle_eviction", "must be at least 1s"));
        }
        Ok(RateLimit {
            key,
            per_client: f.per_client,
            global: f.global,
            trusted_proxies: trusted,
            max_entries: f.max_entries,
            idle_eviction: f.idle_eviction.0,
            draft_headers: f.draft_headers,
        })
    }

    pub(super) fn check_rate(&self, key: &str, r: &Rate) -> Result<(), ConfigError> {
        if !(r.rate > 0.0 && r.rate <= 1e9) {
            return Err(self.error(
                key,
                "rate must be above 0 (requests a second) and at most 1e9",
            ));
        }
        if r.burst == 0 {
            return Err(self.error(key, "burst must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteLimit;
    use crate::config::tests::{BASE, parse};

    #[test]
    fn rate_limit_and_outlier_settings_are_checked() {
        let route = |extra: &str| {
            format!(
                "{BASE}[[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = {{ status = 200 }}\n{extra}"
            )
        };
        let own = parse(&route(
            "rate_limit = { per_client = { rate = 2.5, burst = 5 } }\n",
        ))
        .unwrap();
        assert!(matches!(
            own.routes[0].rate_limit,
            RouteLimit::Own {
                per_client: Some(Rate { burst: 5, .. }),
                global: None
            }
        ));
        let off = parse(&route("rate_limit = false\n")).unwrap();
        assert_eq!(off.routes[0].rate_limit, RouteLimit::Off);
        // A misspelt key is refused, never read as an empty override.
        assert!(
            parse(&route(
                "rate_limit = { per_clinet = { rate = 1.0, burst = 1 } }\n"
            ))
            .is_err()
        );
        let err = parse(&route(
            "rate_limit = { global = { rate = 0.0, burst = 1 } }\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rate must be above 0"), "{err}");
        let err = parse(&format!("{BASE}[rate_limit]\nidle_eviction = \"0s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`rate_limit.idle_eviction`"), "{err}");
        let err = parse(&format!("{BASE}[rate_limit]\nkey = \"cookie\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("header:NAME"), "{err}");
    }
}
