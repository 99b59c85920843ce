//! How many names one uid may make the agent track. Every name a call asks for is
//! tracked in the store (read from Vault, then re-read on every refresh) while the call
//! lasts: without a bound, one peer allowed a prefix (`consumer/*`) could hold any
//! number of made-up names open and multiply the agent's memory and its load on Vault.
//!
//! The budget counts what a uid's open calls hold now, each call its own names (a name
//! in two streams counts twice), and gives it back when the call or stream ends. The
//! store keeps names nobody holds for a while, but at most as many as one uid's budget
//! (made-up names, without a value, go first), so the names the agent tracks are
//! bounded by the names held, that many idle ones and the preload list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::Status;

/// What each uid's open calls hold.
#[derive(Debug)]
pub struct NameBudget {
    limit: usize,
    held: Arc<Mutex<HashMap<u32, usize>>>,
}

/// One call's share of its uid's budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    uid: u32,
    names: usize,
    held: Arc<Mutex<HashMap<u32, usize>>>,
}

impl NameBudget {
    /// A budget of `limit` names held at once per uid.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::default(),
        }
    }

    /// Counts a call's `names` against `uid`'s budget until the returned charge is
    /// dropped; RESOURCE_EXHAUSTED (and nothing counted) when they would take it past
    /// the limit.
    pub fn charge(&self, uid: u32, names: usize) -> Result<Charge, Status> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let now = held.get(&uid).copied().unwrap_or(0);
        if now.saturating_add(names) > self.limit {
            return Err(Status::resource_exhausted(format!(
                "at most {} names held at once per uid (limits.names_per_uid); this uid's open calls hold {now}",
                self.limit
            )));
        }
        held.insert(uid, now + names);
        Ok(Charge {
            uid,
            names,
            held: self.held.clone(),
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(now) = held.get_mut(&self.uid) {
            *now = now.saturating_sub(self.names);
            if *now == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_held_at_once_are_bounded_per_uid_and_given_back() {
        let budget = NameBudget::new(100);
        let a = budget.charge(1, 60).unwrap();
        let b = budget.charge(1, 40).unwrap();
        let err = budget.charge(1, 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // Another uid has its own budget.
        let other = budget.charge(2, 100).unwrap();
        drop(a);
        let c = budget.charge(1, 60).unwrap();
        assert!(budget.charge(1, 1).is_err());
        drop((b, c, other));
        assert!(budget.held.lock().unwrap().is_empty());
        budget.charge(1, 100).unwrap();
    }
}
