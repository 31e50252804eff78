use powerapi::cli::{Cli, execute};

fn main() {
    let result = Cli::load().and_then(execute);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Every error's message carries its cause and its fix once; the chain would repeat them.
            eprintln!("powerapi: error: {e}");
            std::process::exit(1);
        }
    }
}
