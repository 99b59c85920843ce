//! keygate agent.
