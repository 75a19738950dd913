use std::process::ExitCode;

fn main() -> ExitCode {
    palisade::cmd::main("palisade")
}
