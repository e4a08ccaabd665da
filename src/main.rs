//! The `hotlead` binary: parse the command line and hand over to the library.

use clap::Parser;

// Scoring allocates many small, short-lived strings and maps per event;
// mimalloc serves them markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hotlead::cli::Cli::parse();
    match hotlead::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", hotlead::cli::error_text(&e));
            std::process::ExitCode::from(2)
        }
    }
}
