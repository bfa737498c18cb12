//! `secretlog`: the operator CLI. All logic lives in the library.

// Every node role runs in this binary. glibc's allocator showed up as ~15% of a reader's CPU
// under concurrent reads (arena locks, consolidation); mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    secretlog_ops::cli::main()
}

/// Opt this process (and the processes it starts) out of transparent huge pages.
///
/// mimalloc asks for huge pages on its arena (`MADV_HUGEPAGE`), and with THP in `madvise` mode (a
/// common default, Debian's among them) every 2 MiB region it touches becomes resident whole, and
/// khugepaged collapses regions that mimalloc had partly returned back into huge pages. In a soak
/// a reader's RSS climbed with its `AnonHugePages`, 26 -> 124 MiB in 15 minutes, while a reader
/// started beside it with THP off held level (docs/benchmarks.md, "A one-hour soak"). The nodes'
/// heaps are some 100 MiB: huge pages buy them nothing measurable. Databases that allocate as we
/// do advise the same (Redis, MongoDB). Done first, before the heap grows; failure (an old
/// kernel) leaves THP as the system has it.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
