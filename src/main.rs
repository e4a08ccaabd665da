//! The `hotlead` binary: parse the command line and hand over to the library.

use clap::Parser;

// Scoring allocates many small, short-lived strings and maps per event;
// mimalloc serves them markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = hotlead::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(hotlead::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", hotlead::cli::error_text(&e));
            std::process::ExitCode::from(2)
        }
    };
    // A Kafka client whose broker is gone can hold its thread forever:
    // exit without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
