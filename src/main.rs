//! `llmgw`: an OpenAI-compatible LLM gateway for SLURM clusters. See `llmgw --help`.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and each 2 MiB
    // page then counts whole in RSS however little of it is used (idle RSS 25 -> 16 MiB,
    // BENCHMARKS.md, issue 13). Children inherit the setting; the model servers get
    // the machine's back (`supervise::die_with_parent`).
    let _ = nix::sys::prctl::set_thp_disable(true);
    llmgw::cli::main()
}
