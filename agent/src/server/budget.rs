//! How many distinct names one uid may make the agent track. Every name a peer asks
//! for is registered in the store and re-read from Vault on every refresh, for the
//! agent's lifetime: without a bound, one peer allowed a prefix (`consumer/*`) could
//! make the agent track any number of made-up names and multiply its load on Vault.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use tonic::Status;

use crate::name::SecretName;

/// Distinct names one uid may have the agent track (four full requests; a gateway
/// watches at most 1024 at a time, so this leaves room for reloads that change them).
pub const MAX_NAMES_PER_UID: usize = 4096;

/// The names each uid has asked for so far.
#[derive(Debug, Default)]
pub struct NameBudget {
    asked: Mutex<HashMap<u32, HashSet<SecretName>>>,
}

impl NameBudget {
    /// Counts `names` against `uid`'s budget; RESOURCE_EXHAUSTED (and nothing counted)
    /// when the new ones would take it past [`MAX_NAMES_PER_UID`].
    pub fn charge(&self, uid: u32, names: &[SecretName]) -> Result<(), Status> {
        let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        let known = asked.entry(uid).or_default();
        let new: Vec<&SecretName> = names.iter().filter(|n| !known.contains(*n)).collect();
        if known.len() + new.len() > MAX_NAMES_PER_UID {
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_NAMES_PER_UID} distinct names per uid"
            )));
        }
        known.extend(new.into_iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<SecretName> {
        range
            .map(|i| SecretName::parse(&format!("consumer/u{i}/jwt-auth")).unwrap())
            .collect()
    }

    #[test]
    fn distinct_names_are_bounded_per_uid() {
        let budget = NameBudget::default();
        budget.charge(1, &names(0..MAX_NAMES_PER_UID)).unwrap();
        // Asking again for known names is free.
        budget.charge(1, &names(0..10)).unwrap();
        let err = budget
            .charge(1, &names(MAX_NAMES_PER_UID..MAX_NAMES_PER_UID + 1))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // Another uid has its own budget.
        budget.charge(2, &names(0..100)).unwrap();
    }
}
