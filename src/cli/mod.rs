//! The command line: clap's types ([`args`]), one file per command family that turns flags into
//! library calls and prints their results, terminal progress, and the one error-line printer.
//! The library below never sees clap.

pub mod args;
pub mod calibrate;
pub mod config;
pub mod errors;
pub mod images;
pub mod models;
pub mod progress;
pub mod push;
pub mod serve;
pub mod train;
