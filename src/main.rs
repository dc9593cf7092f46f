//! `llmgw`: an OpenAI-compatible LLM gateway for SLURM clusters. See `llmgw --help`.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    llmgw::cli::main()
}
