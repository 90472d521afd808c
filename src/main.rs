//! `idcctl`: the idc controller command line.
mod cli;

fn main() -> std::process::ExitCode {
    // Shard buffers (about 30 MB) are allocated and freed over and over from several threads.
    // glibc's dynamic mmap threshold would move them into per-thread heaps that keep the memory
    // after free, so peak memory crept up with dataset size; a fixed threshold returns them to
    // the OS on free.
    // SAFETY: mallopt only tunes the allocator and is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    cli::main()
}
