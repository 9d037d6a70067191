//! The `wasp` binary: parses Envoy's flags and runs the server.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = wasp::server::Options::parse();
    match wasp::server::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
