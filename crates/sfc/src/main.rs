//! `sfc`: the registry and the operator commands. A thin layer over the `sfc` library; see
//! `sfc --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sfc::cli::Cli::parse();
    sfc::cli::init_logging(&cli);
    match sfc::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
