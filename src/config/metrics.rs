//! `[metrics]` and `[access_log]`: where the Prometheus endpoint, the
//! latency histogram logs and the access log go.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, ConfigValidator, Dur, Size};

/// `[metrics]`: where the Prometheus endpoint is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// A listener of its own, served by the control side; `None`: no endpoint.
    pub listen: Option<SocketAddr>,
    pub path: String,
    /// Where interval logs of the latency histograms go; `None`: nowhere.
    pub histogram_dir: Option<PathBuf>,
    pub histogram_interval: Duration,
    pub histogram_keep: usize,
    pub histogram_file_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub(super) struct FileMetrics {
    listen: Option<String>,
    path: String,
    histogram_dir: Option<PathBuf>,
    histogram_interval: Dur,
    histogram_keep: usize,
    histogram_file_bytes: Size,
}

impl Default for FileMetrics {
    fn default() -> Self {
        FileMetrics {
            listen: None,
            path: default_metrics_path(),
            histogram_dir: None,
            histogram_interval: Dur::secs(10),
            histogram_keep: 24,
            histogram_file_bytes: Size(64 << 20),
        }
    }
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAccessLog {
    pub(super) path: Option<PathBuf>,
    #[serde(default)]
    pub(super) redact: Vec<String>,
}

impl ConfigValidator<'_> {
    pub(super) fn metrics(&self, file: &FileMetrics) -> Result<Metrics, ConfigError> {
        let listen = match &file.listen {
            None => None,
            Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    "metrics.listen",
                    format!("'{l}' is not an address:port (IPv6 as [::1]:9091)"),
                )
            })?),
        };
        if !file.path.starts_with('/') || file.path.contains(['?', '#', ' ']) {
            return Err(self.error(
                "metrics.path",
                "must be a path starting with '/', without '?', '#' or spaces",
            ));
        }
        if file.histogram_interval.0 < Duration::from_secs(1) {
            return Err(self.error("metrics.histogram_interval", "must be at least 1s"));
        }
        if file.histogram_keep == 0 {
            return Err(self.error("metrics.histogram_keep", "must be at least 1"));
        }
        Ok(Metrics {
            listen,
            path: file.path.clone(),
            histogram_dir: file.histogram_dir.clone(),
            histogram_interval: file.histogram_interval.0,
            histogram_keep: file.histogram_keep,
            histogram_file_bytes: file.histogram_file_bytes.0,
        })
    }

    pub(super) fn redact(&self, names: &[String]) -> Result<Vec<String>, ConfigError> {
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.len() > crate::redact::MAX_NAME {
                return Err(self.error(
                    &format!("access_log.redact.{i}"),
                    format!(
                        "'{name}': a field name is 1 to {} bytes",
                        crate::redact::MAX_NAME
                    ),
                ));
            }
        }
        Ok(names.to_vec())
    }
}
