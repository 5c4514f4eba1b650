//! `latchkey`: the appliance binary — CLI and HTTPS server around
//! `latchkey-core`.
//!
//! Errors end here: printed once as `latchkey: <message>` on stderr, exit
//! status 1 (clap's usage errors exit 2).

mod cli;
mod commands;
mod context;
mod logging;
mod prompt;
mod remote;
mod server;
mod term;
mod tls;
mod update;

use clap::Parser;
use cli::{Cli, Command, ConfigCommand, TlsCommand};
use std::io::Write;
use std::process::ExitCode;

/// Only with `--features mimalloc`, for side-by-side allocator
/// measurements (docs/PERFORMANCE.md); releases use glibc's allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `latchkey … | head` closed the pipe: end quietly with the status a
        // process killed by SIGPIPE reports (128 + 13), as other tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            // One line: the chain of causes, outermost first. Many errors
            // already quote their source in their own message; a cause
            // whose text is already there is not repeated.
            let mut msg = String::new();
            for cause in e.chain() {
                let text = cause.to_string();
                if msg.contains(&text) {
                    continue;
                }
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&text);
            }
            eprintln!("latchkey: {}", term::safe(&msg));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keygen = cli.command {
        return commands::config::keygen();
    }
    // No data directory or configuration of the caller's: the service's
    // own are under --state-dir.
    if let Command::Service(cmd) = cli.command {
        return commands::service::run(cmd);
    }
    let ctx = context::Context::load(&cli.global)?;
    let serving = matches!(cli.command, Command::Serve(_));
    let log = logging::init(&ctx, serving);
    match cli.command {
        Command::Serve(args) => server::run(ctx, args, &log),
        Command::Vault(cmd) => commands::vault::run(&ctx, cmd),
        Command::Backup(args) => commands::backup::backup(&ctx, args),
        Command::Restore(args) => commands::backup::restore(&ctx, args),
        Command::Unseal(args) => server::unseal(&ctx, args),
        Command::Seal => server::seal(&ctx),
        Command::Keygen => commands::config::keygen(),
        Command::Service(cmd) => commands::service::run(cmd),
        Command::Setup(args) => commands::auth::setup(&ctx, args),
        Command::User(cmd) => commands::auth::user(&ctx, cmd),
        Command::Audit(cmd) => commands::auth::audit(&ctx, cmd),
        Command::Config(ConfigCommand::Check) => commands::config::check(&ctx),
        Command::Store(cmd) => commands::store::run(&ctx, cmd),
        Command::Update(args) => update::run(&ctx, &args),
        Command::SelfCheck => commands::self_check::run(&ctx),
        Command::Tls(TlsCommand::ExportCa) => {
            let dir = ctx.data_dir.join("tls");
            let pem = match tls::export_ca_pem(&dir) {
                Ok(pem) => pem,
                // Before the first `serve`: make the CA now (exactly as
                // `serve` would), so devices can trust it in advance.
                Err(tls::TlsError::CaNotFound { .. }) => {
                    latchkey_core::store::ensure_data_dir(&ctx.data_dir)?;
                    tls::ca::LocalCa::load_or_create(&dir)?;
                    tls::export_ca_pem(&dir)?
                }
                Err(e) => return Err(e.into()),
            };
            write!(std::io::stdout(), "{pem}")?;
            Ok(())
        }
        Command::Tls(TlsCommand::Status { json }) => {
            let t = server::tls_settings(&ctx)?;
            let status = tls::status(&t.dir, t.cert_file.as_deref())?;
            if json {
                writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::to_string_pretty(&status)?
                )?;
                return Ok(());
            }
            write!(std::io::stdout(), "{status}")?;
            Ok(())
        }
    }
}
