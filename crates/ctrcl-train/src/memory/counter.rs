//! The counting global allocator: the bytes live and their peak, and the step's phase marker
//! (`optimizer_phase`) that splits a step's peak into forward/backward and optimizer. A leaf:
//! the step calls into it, the estimate in `super` reads it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);
pub(super) static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes it has handed out and not yet taken back, and their
/// peak. Install with `#[global_allocator] static A: Counting = Counting;`. Two relaxed atomic
/// operations per allocation: invisible next to a training step's few hundred tensor buffers.
pub struct Counting;

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    if now > PEAK.load(Relaxed) {
        PEAK.fetch_max(now, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

/// Bytes allocated and not freed, if [`Counting`] is the global allocator.
pub fn live_bytes() -> Option<usize> {
    let live = LIVE.load(Relaxed);
    // Any Rust program has allocated by the time it asks (its arguments, at least).
    (live > 0).then_some(live)
}

/// The peak of live bytes when [`optimizer_phase`] was last called.
pub(super) static GRADIENT_PEAK: AtomicUsize = AtomicUsize::new(0);

/// Called by the training step between the backward pass and the optimizer steps: keeps the
/// peak so far (forward and backward: the activations) and starts a new one (the optimizer's),
/// so that the two can be extrapolated separately. Two atomic operations per step.
pub(crate) fn optimizer_phase() {
    GRADIENT_PEAK.store(PEAK.load(Relaxed), Relaxed);
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}
