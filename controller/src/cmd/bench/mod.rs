//! `palisade bench`: the policy benchmark, and the report over every benchmark's output that
//! `make bench` writes.
mod goals;
mod policy;
mod report;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Full and incremental policy compile on a synthetic cluster.
    Policy(policy::Args),
    /// Read every `<benchmark>.txt` in a directory and write results.json and results.md beside them.
    Report(report::Args),
}

pub fn run(args: Args) -> Result<u8> {
    match args.what {
        What::Policy(args) => policy::run(args),
        What::Report(args) => report::run(args),
    }
}
