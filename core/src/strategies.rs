//! Proptest strategies for the policy inputs (filled in by the property suite).
