//! The `leasedog` binary: parses the command line and hands over to `cli`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = leasedog::cli::Args::parse();
    leasedog::cli::main(args)
}
