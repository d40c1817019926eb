//! An ordered set of candidate URLs fetched one by one or all at once, decided by priority.
//!
//! Discovery tries candidates in a fixed order. In sequential mode the next is requested only when
//! the previous failed; in parallel mode all are requested together, and the winner is still the
//! highest-priority candidate that succeeded, decided as soon as every higher one has failed.

use std::collections::HashMap;

use url::Url;

use crate::machine::{Outgoing, RequestId, RequestIds};

/// The state of one candidate.
#[derive(Debug)]
enum Slot<T, E> {
    Unsent,
    InFlight,
    Done(Result<T, E>),
}

/// A priority-ordered candidate stage producing `T` or failing each candidate with `E`.
#[derive(Debug)]
pub(crate) struct Stage<T, E> {
    urls: Vec<Url>,
    slots: Vec<Slot<T, E>>,
    in_flight: HashMap<RequestId, usize>,
    parallel: bool,
}

/// What a stage has decided so far.
pub(crate) enum Decision {
    /// Candidate `index` won.
    Winner(usize),
    /// Every candidate failed.
    Exhausted,
    /// Still waiting for answers.
    Pending,
}

impl<T, E> Stage<T, E> {
    pub(crate) fn new(urls: Vec<Url>, parallel: bool) -> Self {
        let slots = urls.iter().map(|_| Slot::Unsent).collect();
        Self { urls, slots, in_flight: HashMap::new(), parallel }
    }

    pub(crate) fn url(&self, index: usize) -> &Url {
        &self.urls[index]
    }

    /// The requests to send now, built by `build` (through [`Outgoing::new`], so under the fetch
    /// policy) with the id it is given, for each candidate that should go out.
    pub(crate) fn requests(
        &mut self,
        ids: &mut RequestIds,
        mut build: impl FnMut(&Url, RequestId) -> Result<Outgoing, E>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        loop {
            if !self.parallel && !self.in_flight.is_empty() {
                break;
            }
            let next = if self.parallel {
                self.slots.iter().position(|slot| matches!(slot, Slot::Unsent))
            } else {
                // Sequentially, only request the first unsent candidate when all before it failed.
                let first_open = self.slots.iter().position(|slot| !matches!(slot, Slot::Done(Err(_))));
                first_open.filter(|index| matches!(self.slots[*index], Slot::Unsent))
            };
            let Some(index) = next else { break };
            let id = ids.next_id();
            match build(&self.urls[index], id) {
                Ok(outgoing) => {
                    self.slots[index] = Slot::InFlight;
                    self.in_flight.insert(id, index);
                    out.push(outgoing);
                }
                Err(error) => self.slots[index] = Slot::Done(Err(error)),
            }
        }
        out
    }

    /// Which candidate `id` was for, if it belongs to this stage.
    pub(crate) fn owner(&self, id: RequestId) -> Option<usize> {
        self.in_flight.get(&id).copied()
    }

    /// Records the result for request `id`.
    pub(crate) fn complete(&mut self, id: RequestId, result: Result<T, E>) {
        if let Some(index) = self.in_flight.remove(&id) {
            self.slots[index] = Slot::Done(result);
        }
    }

    pub(crate) fn decision(&self) -> Decision {
        for (index, slot) in self.slots.iter().enumerate() {
            match slot {
                Slot::Done(Ok(_)) => return Decision::Winner(index),
                Slot::Done(Err(_)) => {}
                Slot::Unsent | Slot::InFlight => return Decision::Pending,
            }
        }
        Decision::Exhausted
    }

    /// Takes the winner's value out of the stage.
    pub(crate) fn take(&mut self, index: usize) -> Option<T> {
        match std::mem::replace(&mut self.slots[index], Slot::Unsent) {
            Slot::Done(Ok(value)) => Some(value),
            other => {
                self.slots[index] = other;
                None
            }
        }
    }
}
