//! The husk-agent binary: PID 1 of the guest.

use std::process::ExitCode;

use husk_agent::init;

fn main() -> ExitCode {
    if !init::is_pid1() {
        eprintln!("{}", init::NOT_PID1_MESSAGE);
        return ExitCode::from(2);
    }
    match init::run() {
        // PID 1 exits only for the panic test hook: use exit() so the code
        // is exactly what the kernel reports.
        Ok(code) => std::process::exit(code),
        Err(e) => {
            husk_agent::error!("Fatal: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
