//! `ringway ctl`: one request over the admin socket, its reply printed as
//! a table (or as the raw JSON line with `--json`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

/// A reload waits for every shard; a stop answers at once.
const REPLY_WAIT: Duration = Duration::from_secs(35);

/// The options of `ctl histograms`.
#[derive(clap::Args, Debug, Default)]
pub struct HistogramArgs {
    /// histograms: one route's (default: every route's, merged).
    #[arg(long)]
    route: Option<String>,
    /// histograms: one upstream's.
    #[arg(long, conflicts_with = "route")]
    upstream: Option<String>,
    /// histograms: total | upstream | proxy.
    #[arg(long, default_value = "total")]
    metric: String,
    /// histograms: hgrm (percentile distribution) | log (HdrHistogram interval log) | json.
    #[arg(long, default_value = "hgrm")]
    format: String,
    /// histograms: clear them after reading.
    #[arg(long)]
    reset: bool,
    /// ratelimit: how many keys (default 100).
    #[arg(long)]
    top: Option<u64>,
}

pub fn run(
    config: &Path,
    socket: Option<&Path>,
    command: &str,
    h: &HistogramArgs,
    raw: bool,
) -> ExitCode {
    let mut request = json!({ "command": command });
    if command == "histograms" {
        request["route"] = json!(h.route);
        request["upstream"] = json!(h.upstream);
        request["metric"] = json!(h.metric);
        request["format"] = json!(h.format);
        request["reset"] = json!(h.reset);
    }
    if command == "ratelimit" {
        request["top"] = json!(h.top);
    }
    match ask(config, socket, &request) {
        Ok(reply) => {
            let ok = reply.get("ok").and_then(Value::as_bool) == Some(true);
            if raw {
                println!("{reply}");
            } else if ok {
                print!("{}", human(command, &reply["result"]));
            } else {
                eprintln!(
                    "error: {}",
                    reply["error"].as_str().unwrap_or("malformed reply")
                );
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ask(config: &Path, socket: Option<&Path>, request: &Value) -> Result<Value, String> {
    let socket: PathBuf = match socket {
        Some(s) => s.to_path_buf(),
        None => admin_socket(config)?,
    };
    let stream = UnixStream::connect(&socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let _ = stream.set_read_timeout(Some(REPLY_WAIT));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut w = &stream;
    writeln!(w, "{request}").map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading the reply: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("malformed reply {line:?}: {e}"))
}

fn human(command: &str, r: &Value) -> String {
    match command {
        "status" => status(r),
        "config" => r["toml"].as_str().unwrap_or_default().to_string(),
        "reload" => {
            let mut out = format!("reloaded: generation {}\n", r["generation"]);
            for key in ["warnings", "restart_needed"] {
                for w in r[key].as_array().into_iter().flatten() {
                    out += &format!("warning: {}\n", w.as_str().unwrap_or_default());
                }
            }
            out
        }
        "drain" => "draining: not accepting; in-flight requests finish\n".into(),
        "reopen-logs" => "access log reopened\n".into(),
        "ratelimit" => {
            let mut out = format!(
                "{:>12}  {:<40}  bucket\n",
                "requests",
                r["key"].as_str().unwrap_or("key")
            );
            for k in r["keys"].as_array().into_iter().flatten() {
                out += &format!(
                    "{:>12}  {:<40}  {}\n",
                    k["requests"].to_string(),
                    k["key"].as_str().unwrap_or_default(),
                    k["bucket"].as_str().unwrap_or_default()
                );
            }
            out
        }
        "metrics" => r["text"].as_str().unwrap_or_default().to_string(),
        "histograms" => match r["text"].as_str() {
            Some(text) => text.to_string(),
            None => format!("{}\n", serde_json::to_string_pretty(r).unwrap_or_default()),
        },
        "stop" => "stopping: draining, then exiting\n".into(),
        _ => format!("{r}\n"),
    }
}

fn status(r: &Value) -> String {
    let mut out = format!(
        "ringway {}  pid {}  up {}s  config {} (generation {}){}\n",
        r["version"].as_str().unwrap_or("?"),
        r["pid"],
        r["uptime_s"],
        r["config"].as_str().unwrap_or("?"),
        r["generation"],
        if r["draining"] == true {
            "  DRAINING"
        } else {
            ""
        }
    );
    match &r["last_reload"] {
        Value::Null => {}
        l if l["ok"] == true => {
            out += &format!(
                "last reload: {} ok, generation {}\n",
                l["at"].as_str().unwrap_or("?"),
                l["generation"]
            );
        }
        l => {
            out += &format!(
                "last reload: {} FAILED: {}\n",
                l["at"].as_str().unwrap_or("?"),
                l["error"].as_str().unwrap_or("?")
            );
        }
    }
    for l in r["listeners"].as_array().into_iter().flatten() {
        out += &format!(
            "listener {} on {}\n",
            l["name"].as_str().unwrap_or("?"),
            l["addr"].as_str().unwrap_or("?")
        );
    }
    out += &format!(
        "{:<6} {:<18} {:>11} {:>12} {:>8} {:>15} {:>10}\n",
        "shard", "driver", "connections", "requests", "aborts", "buffers", "generation"
    );
    for s in r["shards"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str() {
            out += &format!("{:<6} {e}\n", s["shard"].to_string());
            continue;
        }
        out += &format!(
            "{:<6} {:<18} {:>11} {:>12} {:>8} {:>15} {:>10}\n",
            s["shard"].to_string(),
            s["driver"].as_str().unwrap_or("?"),
            s["connections"].to_string(),
            s["requests"].to_string(),
            s["client_aborts"].to_string(),
            format!("{}/{}", s["buffers_leased"], s["buffers_max"]),
            s["generation"].to_string()
        );
    }
    out
}

/// `server.admin_socket` of the config file. Only that key is read, so the
/// socket is found while the rest of the file is being edited and may not
/// validate: a `ctl reload` then reports what is wrong with it.
fn admin_socket(config: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("{}: {e}; pass --socket", config.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: not TOML ({e}); pass --socket", config.display()))?;
    match table.get("server").and_then(|s| s.get("admin_socket")) {
        Some(toml::Value::String(path)) => Ok(PathBuf::from(path)),
        _ => Err(format!(
            "{} sets no server.admin_socket; set one, or pass --socket",
            config.display()
        )),
    }
}
