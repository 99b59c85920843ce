//! Buffers kept per worker thread for the next requests it serves.
//!
//! A request's `HeaderMap` is two allocations (its index table and its entries) and
//! the upstream answer's field lines one more, made when a head is read and freed
//! when the request is done: with malloc's bookkeeping, a few hundred instructions per
//! request. The request path gives them back, emptied, when it is done with them
//! ([`give_headers`], [`give_lines`]); the next heads are read into them
//! ([`take_headers`], [`take_lines`]). A worker has many requests in flight at once
//! (one per connection waiting on its upstream), so a stack of each is kept, not one.

use std::cell::RefCell;
use std::thread::LocalKey;

use http::HeaderMap;

/// Buffers of each kind kept per worker: enough for the requests a busy worker has in
/// flight, few enough that an idle one holds little (an empty header map of a typical
/// request's capacity is under a kilobyte, a line buffer a few hundred bytes).
const KEPT: usize = 128;
/// A header map grown for an unusually large head is freed rather than kept.
const MAX_KEPT_FIELDS: usize = 64;
/// Likewise a line buffer (bytes).
const MAX_KEPT_LINE_BYTES: usize = 4 * 1024;

thread_local! {
    static HEADERS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static LINES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take<T: 'static>(stack: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    stack.with(|kept| kept.try_borrow_mut().ok()?.pop())
}

fn give<T: 'static>(stack: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    stack.with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut()
            && kept.len() < KEPT
        {
            kept.push(item);
        }
    });
}

/// An empty header map with room from an earlier request, if this thread has one.
pub fn take_headers() -> Option<HeaderMap> {
    take(&HEADERS)
}

/// Keeps `headers`, emptied (its values dropped now), for a later request on this
/// thread.
pub fn give_headers(mut headers: HeaderMap) {
    if headers.capacity() == 0 || headers.capacity() > MAX_KEPT_FIELDS {
        return;
    }
    headers.clear();
    give(&HEADERS, headers);
}

/// An empty line buffer with room from an earlier answer, if this thread has one.
pub fn take_lines() -> Option<Vec<u8>> {
    take(&LINES)
}

/// Keeps `lines`, emptied, for a later answer on this thread.
pub fn give_lines(mut lines: Vec<u8>) {
    if lines.capacity() == 0 || lines.capacity() > MAX_KEPT_LINE_BYTES {
        return;
    }
    lines.clear();
    give(&LINES, lines);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        while take_headers().is_some() {}
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        let capacity = headers.capacity();
        give_headers(headers);
        let again = take_headers().expect("the map given back");
        assert!(again.is_empty(), "its fields are gone");
        assert_eq!(again.capacity(), capacity);
        assert!(take_headers().is_none(), "one given, one taken");
    }

    #[test]
    fn a_given_line_buffer_comes_back_empty_with_its_room() {
        while take_lines().is_some() {}
        let mut lines = Vec::with_capacity(256);
        lines.extend_from_slice(b"set-cookie: session=1\r\n");
        give_lines(lines);
        let again = take_lines().expect("the buffer given back");
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 256);
        assert!(take_lines().is_none());
    }

    #[test]
    fn buffers_without_room_or_with_too_much_are_not_kept() {
        while take_headers().is_some() {}
        while take_lines().is_some() {}
        give_headers(HeaderMap::new());
        give_headers(HeaderMap::with_capacity(MAX_KEPT_FIELDS * 4));
        give_lines(Vec::new());
        give_lines(Vec::with_capacity(MAX_KEPT_LINE_BYTES + 1));
        assert!(take_headers().is_none());
        assert!(take_lines().is_none());
    }

    #[test]
    fn at_most_so_many_are_kept() {
        while take_headers().is_some() {}
        for _ in 0..KEPT + 10 {
            give_headers(HeaderMap::with_capacity(4));
        }
        let mut kept = 0;
        while take_headers().is_some() {
            kept += 1;
        }
        assert_eq!(kept, KEPT);
    }
}
