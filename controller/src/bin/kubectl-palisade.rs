//! The same CLI as a kubectl plugin: `kubectl palisade promote NAME` runs this binary.
use std::process::ExitCode;

fn main() -> ExitCode {
    palisade::cmd::main("kubectl palisade")
}
