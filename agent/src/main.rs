//! The husk-agent binary: PID 1 of the guest, or `husk-agent serve --listen
//! unix:<path> [--stdio-listen unix:<path>] [--root <dir>]` on the host for
//! tests.

use std::process::ExitCode;

use anyhow::Context;
use husk_agent::{host, init, rpc};

fn main() -> ExitCode {
    husk_agent::log::install();
    if init::is_pid1() {
        return match init::run() {
            // PID 1 exits only for the panic test hook: use exit() so the
            // code is exactly what the kernel reports.
            Ok(code) => std::process::exit(code),
            Err(e) => {
                tracing::error!("Fatal: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, _)) if cmd == "--version" => {
            println!("{}", husk_version::line("husk-agent"));
            ExitCode::SUCCESS
        }
        Some((cmd, rest)) if cmd == "serve" => match serve(rest) {
            Ok(never) => match never {},
            Err(e) => {
                tracing::error!("Fatal: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{}", init::NOT_PID1_MESSAGE);
            ExitCode::from(2)
        }
    }
}

/// Host mode: serves the agent API until the process is killed.
fn serve(args: &[String]) -> anyhow::Result<std::convert::Infallible> {
    let args = rpc::parse_serve_args(args)?;
    host::run(args).context("Failed to serve the agent API")
}
