use clap::Parser;
use powerapi::cli::{Cli, run};

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("powerapi: error: {e:#}");
            std::process::exit(1);
        }
    }
}
