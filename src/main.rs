mod cli;

/// jemalloc, returning freed memory to the OS within a second: a cold
/// start or relist passes every job document through the reconciler once,
/// and glibc's allocator kept that peak resident for good (2.1 KiB per
/// resource at 10k, against 0.9 KiB with this; see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `MALLOC_CONF`): a background thread purges
/// freed pages after 1 s instead of on later allocations after 10 s.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match cli::main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
