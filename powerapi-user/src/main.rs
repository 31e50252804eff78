use clap::Parser;
use powerapi::cli::{Cli, execute};

fn main() {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Every error's message carries its cause and its fix once; the chain would repeat them.
            eprintln!("powerapi: error: {e}");
            std::process::exit(1);
        }
    }
}
