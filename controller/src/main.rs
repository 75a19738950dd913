use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = palisade::cmd::Cli::parse();
    match palisade::cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(palisade::cmd::EXIT_ERROR)
        }
    }
}
