//! husk-jailer: starts husk-vmm confined (see the library's docs and SECURITY.md). Prints
//! the VMM's pid on stdout and exits; errors go to stderr with their causes.

use husk_jail::{confine, Jail, SpecError};

fn main() {
    let jail = match Jail::from_args(std::env::args_os()) {
        Ok(j) => j,
        Err(SpecError::Cli { text, info: true }) => {
            print!("{text}");
            return;
        }
        Err(SpecError::Cli { text, info: false }) => {
            eprint!("{text}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("husk-jailer: {e}");
            std::process::exit(2);
        }
    };
    match confine::run(&jail) {
        Ok(pid) => println!("{pid}"),
        Err(e) => {
            eprintln!("husk-jailer: {}", husk_errors::chain(&e));
            std::process::exit(1);
        }
    }
}
