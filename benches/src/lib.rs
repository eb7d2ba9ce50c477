//! seatledger benchmarks: criterion micro-benchmarks and load tools.
#![forbid(unsafe_code)]
