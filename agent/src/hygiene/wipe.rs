//! A global allocator that wipes memory when it is freed.
//!
//! Secrets pass through buffers the agent does not own: the HTTP body of a Vault
//! answer, the JSON parser's strings, gRPC encode buffers. Those libraries free them
//! without zeroizing, so an old secret would stay in freed heap memory until the
//! allocator hands the block out again. Wiping every block on free closes that gap for
//! everything that is freed; buffers a library keeps alive (a connection's read or
//! write buffer) keep what they last held until they are reused or dropped.

use std::alloc::{GlobalAlloc, Layout, System};

use zeroize::Zeroize as _;

/// [`System`], zeroing every block before it is returned to it.
#[derive(Debug, Default, Clone, Copy)]
pub struct WipeOnFree;

#[expect(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; this one only forwards to System and zeroes the block it is given back"
)]
// SAFETY: every method forwards to `System` with the caller's layout; `dealloc` first
// zeroes exactly the `layout.size()` bytes the caller owned at `ptr`, which are valid for
// writes until they are freed.
unsafe impl GlobalAlloc for WipeOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !ptr.is_null() && layout.size() > 0 {
            // SAFETY: the caller owns `layout.size()` bytes at `ptr` until this returns.
            unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) }.zeroize();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    // `realloc` keeps the default (allocate, copy, `dealloc`), so the old block is
    // wiped too instead of being released by `System.realloc` as it is.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_and_frees_through_system() {
        let layout = Layout::from_size_align(64, 8).unwrap();
        // The allocator itself, without making it global in the test binary.
        #[expect(unsafe_code, reason = "exercising the allocator directly")]
        // SAFETY: a fresh block of `layout`, written within bounds and freed once.
        unsafe {
            let ptr = WipeOnFree.alloc(layout);
            assert!(!ptr.is_null());
            ptr.write_bytes(0xAB, 64);
            let ptr = WipeOnFree.realloc(ptr, layout, 128);
            assert!(!ptr.is_null());
            assert_eq!(*ptr.add(63), 0xAB);
            WipeOnFree.dealloc(ptr, Layout::from_size_align(128, 8).unwrap());
        }
    }
}
