//! `llmgw`: an OpenAI-compatible LLM gateway for SLURM clusters. See `llmgw --help`.

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc, asked for plain `mi_malloc` when the alignment is one it gives anyway: the
/// `mimalloc` crate calls `mi_malloc_aligned` for every allocation, ~4x the instructions
/// of `mi_malloc` (3 k of a request's 65 k, BENCHMARKS.md, issue 13).
struct Allocator;

/// What `mi_malloc` guarantees on every 64-bit target (`MI_MAX_ALIGN_SIZE`); smaller
/// blocks are aligned to their size, hence the `align <= size` condition (as in std's
/// `System`).
const MI_MIN_ALIGN: usize = 16;

fn natural(layout: &Layout, size: usize) -> bool {
    layout.align() <= MI_MIN_ALIGN && layout.align() <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks of
// either kind); the fallbacks are the `mimalloc` crate's own implementation.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if natural(&layout, layout.size()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if natural(&layout, layout.size()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if natural(&layout, new_size) {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

fn main() -> std::process::ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and each 2 MiB
    // page then counts whole in RSS however little of it is used (idle RSS 25 -> 16 MiB,
    // BENCHMARKS.md, issue 13). Children inherit the setting; the model servers get
    // the machine's back (`supervise::die_with_parent`).
    let _ = nix::sys::prctl::set_thp_disable(true);
    llmgw::main()
}
