//! Header maps kept per worker thread for the next requests it reads.
//!
//! A request's `HeaderMap` is two allocations (its index table and its entries), made
//! when the head is read and freed when the request is done: with malloc's locks and
//! bookkeeping, a few hundred instructions per request. The request path gives its
//! map back when it is done with it ([`give`]); the HTTP/1.1 loop builds the next head
//! in one of those ([`take`]). A worker has many requests in flight at once (one per
//! connection waiting on its upstream), so a stack of maps is kept, not one.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per worker: enough for the requests a busy worker has in flight, few
/// enough that an idle one holds little (an empty map of a typical request's
/// capacity is under a kilobyte).
const KEPT: usize = 128;
/// A map grown for an unusually large head is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room from an earlier request, if this thread has one.
pub(super) fn take() -> Option<HeaderMap> {
    SPARE.with(|spare| spare.try_borrow_mut().ok()?.pop())
}

/// Keeps `headers`, emptied (its values dropped now), for a later request on this
/// thread.
pub fn give(mut headers: HeaderMap) {
    if headers.capacity() == 0 || headers.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    headers.clear();
    SPARE.with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < KEPT
        {
            spare.push(headers);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        while take().is_some() {}
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        let capacity = headers.capacity();
        give(headers);
        let again = take().expect("the map given back");
        assert!(again.is_empty(), "its fields are gone");
        assert_eq!(again.capacity(), capacity);
        assert!(take().is_none(), "one given, one taken");
    }

    #[test]
    fn maps_without_room_or_with_too_much_are_not_kept() {
        while take().is_some() {}
        give(HeaderMap::new());
        give(HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 4));
        assert!(take().is_none());
    }

    #[test]
    fn at_most_so_many_are_kept() {
        while take().is_some() {}
        for _ in 0..KEPT + 10 {
            give(HeaderMap::with_capacity(4));
        }
        let mut kept = 0;
        while take().is_some() {
            kept += 1;
        }
        assert_eq!(kept, KEPT);
    }
}
