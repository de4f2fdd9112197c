//! The husk-agent binary: PID 1 of the guest, or `husk-agent serve --listen
//! unix:<path>` on the host for tests.

use std::process::ExitCode;

use anyhow::Context;
use husk_agent::{init, rpc};

fn main() -> ExitCode {
    if init::is_pid1() {
        return match init::run() {
            // PID 1 exits only for the panic test hook: use exit() so the
            // code is exactly what the kernel reports.
            Ok(code) => std::process::exit(code),
            Err(e) => {
                husk_agent::error!("Fatal: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, rest)) if cmd == "serve" => match serve(rest) {
            Ok(never) => match never {},
            Err(e) => {
                husk_agent::error!("Fatal: {e:#}");
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
    let addr = rpc::parse_serve_args(args)?;
    let server = rpc::serve(addr).context("Failed to start the agent API server")?;
    husk_agent::info!(
        "Serving {} on {}",
        husk_protocol::API_VERSION,
        server.addr()
    );
    loop {
        std::thread::park();
    }
}
