//! `secretlog`: the operator CLI. All logic lives in the library.

// Every node role runs in this binary. glibc's allocator showed up as ~15% of a reader's CPU
// under concurrent reads (arena locks, consolidation); mimalloc's per-thread heaps do not.
// `--features system-allocator` builds with glibc's instead, for heap profilers that hook malloc
// (heaptrack; docs/operations.md "Finding where memory goes"); `--features jemalloc` with
// jemalloc, to compare the allocators' memory over a soak (docs/benchmarks.md, "A 100-minute soak").
#[cfg(not(any(feature = "system-allocator", feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "system-allocator")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    secretlog_ops::process::disable_transparent_huge_pages();
    secretlog_ops::cli::main()
}
