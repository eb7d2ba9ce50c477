//! `seatledger-replay`, built in this package for its tests.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    seatledger_replay::cli::main()
}
