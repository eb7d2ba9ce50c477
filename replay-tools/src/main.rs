//! The `seatledger-replay` binary: the auditor tools' command line, which
//! lives in the library ([`seatledger_replay::cli`]) so the system tests
//! can build the same binary.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    seatledger_replay::cli::main()
}
