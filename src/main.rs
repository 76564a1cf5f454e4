//! The `ringway` binary: run the proxy, or check a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use ringway::control::{Command as ControlCommand, FileLimit};
use ringway::notify::notify;
use ringway::{Config, Server, Snapshot, handover};

mod ctl;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringway",
    version,
    about = "HTTP/1.1 edge reverse proxy, one io_uring loop per core"
)]
struct Cli {
    /// Config file.
    #[arg(long, short, global = true, default_value = "conf/ringway.toml")]
    config: PathBuf,
    /// Take over the listening sockets of the ringway running with this
    /// config's admin socket, then retire it: a binary upgrade that drops
    /// no connection.
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print the compiled routes; exit 1 if invalid.
    Check,
    /// Talk to a running ringway over its admin socket: status, reload,
    /// config, drain, stop, metrics or histograms. Exit 0 when the command
    /// succeeded.
    Ctl {
        /// The admin socket; by default `server.admin_socket` of the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the reply as the raw JSON line.
        #[arg(long)]
        json: bool,
        /// status | reload | config | drain | stop | metrics | histograms | reopen-logs | ratelimit
        command: String,
        #[command(flatten)]
        histograms: ctl::HistogramArgs,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Some(Command::Ctl {
        socket,
        json,
        command,
        histograms,
    }) = &cli.command
    {
        return ctl::run(&cli.config, socket.as_deref(), command, histograms, *json);
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            let snapshot = Snapshot::compile(config);
            print!("{}", snapshot.describe());
            for w in &snapshot.warnings {
                println!("warning: {w}");
            }
            println!("{}: ok", cli.config.display());
            ExitCode::SUCCESS
        }
        Some(Command::Ctl { .. }) => unreachable!("handled above"),
        None => match run(config, cli.upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs the proxy until a signal or `ctl stop` ends it: SIGHUP reloads the
/// config, SIGUSR1 reopens the access log, SIGTERM and SIGINT stop it
/// gracefully.
fn run(config: Config, upgrade: bool) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    open_file_limit(&config);
    let admin = config.server.admin_socket.clone();
    let drain = config.server.drain_timeout.0;
    let server = if upgrade {
        let Some(admin) = &admin else {
            anyhow::bail!("--upgrade takes over through the admin socket: set server.admin_socket");
        };
        let inherited = handover::receive(admin)?;
        let server = Server::start_with(config, Some(inherited))?;
        // Ours run: systemd's main process is this one from now on, before
        // the old one may exit. Then the old process may go. It closes its
        // admin socket at once, then drains.
        notify(&format!("MAINPID={}", std::process::id()));
        // From here on this process serves: whatever fails, it goes on.
        match handover::retire(admin, drain + Duration::from_secs(5))
            .map_err(|e| format!("{e:#}"))
            .and_then(|()| server.open_endpoints().map(drop))
        {
            Ok(()) => log::info!("upgrade: serving; the old process drains"),
            Err(e) => log::error!(
                "upgrade: serving, but without its admin socket or metrics listener: {e}"
            ),
        }
        server
    } else {
        Server::start(config)?
    };
    notify("READY=1");
    let control = server.handle();
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("ringway-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => {
                        log::info!("SIGHUP: reloading the config");
                        control.tell(ControlCommand::Reload);
                    }
                    SIGUSR1 => control.tell(ControlCommand::ReopenLogs),
                    _ => control.tell(ControlCommand::Stop),
                }
            }
        })?;
    server.wait();
    signal_handle.close();
    Ok(())
}
/// Raises the soft open-file limit to the hard one, says what both are, and
/// warns if the shards may want more descriptors than that.
fn open_file_limit(config: &Config) {
    let before = match FileLimit::get() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("open-file limit: cannot read it: {e}");
            return;
        }
    };
    let now = FileLimit::raise().unwrap_or_else(|e| {
        log::warn!("open-file limit: cannot raise the soft limit to the hard one: {e}");
        before
    });
    if now.soft > before.soft {
        log::info!(
            "open-file limit: soft {} (raised from {}), hard {}",
            now.soft,
            before.soft,
            now.hard
        );
    } else {
        log::info!("open-file limit: soft {}, hard {}", now.soft, now.hard);
    }
    let conns = FileLimit::client_connections(config);
    if conns > now.soft {
        log::warn!(
            "open-file limit {} is below the {conns} client connections {} shards may hold \
             (server.max_connections {} each; a proxied one holds two descriptors): past it \
             accepts fail and wait; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) \
             or lower server.max_connections",
            now.soft,
            config.workers(),
            config.server.max_connections
        );
    }
}
