//! Giving freed heap pages back to the kernel after a configuration is loaded.
//!
//! Parsing a large configuration (10 000 routes or consumers) peaks at several times
//! what the result keeps: YAML events, `serde_json` values, intermediate copies. glibc
//! keeps those pages mapped after they are freed, so without a trim the gateway's
//! resident memory stays at the parse's peak for good.

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`).
pub fn trim() {
    #[cfg(target_env = "gnu")]
    #[expect(
        unsafe_code,
        reason = "malloc_trim is a libc call; it takes no pointer and only releases free pages"
    )]
    // SAFETY: `malloc_trim` has no preconditions; it walks the allocator's own free
    // lists under its locks and releases whole free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
