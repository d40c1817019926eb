//! Per-peer budgets: how much of the gateway's unauthenticated work one network peer may use.
//!
//! Everything a stranger can call without a key (dynamic registration, authorization requests,
//! callbacks, token requests, and later consent failures and metadata-document fetches) costs the
//! gateway memory or an upstream request. A security review filled the pending-flow store with
//! 3,000 anonymous `/authorize` calls; a budget per peer caps what one address can make the gateway
//! hold or do, and a bounded table caps the budgets themselves.
//!
//! Each peer has a token bucket: it starts full at [`BudgetConfig::burst`] and regains one unit
//! every [`BudgetConfig::refill_every`]. IPv6 peers are counted per `/64` (one subscriber's
//! allocation), IPv4-mapped IPv6 as the IPv4 address. Time comes in as an argument, so the budget is
//! as deterministic as the rest of core.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::machine::Instant;

/// The shape of one kind of budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Units a peer may spend at once, after a quiet period.
    pub burst: u32,
    /// Time to regain one unit.
    pub refill_every: Duration,
    /// Peers tracked at once; past it, peers whose buckets have refilled are forgotten first, and a
    /// new peer is refused while none can be (fail closed: the table never grows past this).
    pub max_peers: usize,
}

impl BudgetConfig {
    /// The budget for the OAuth endpoints a stranger may call: a burst of 30 requests and one more
    /// every 2 seconds. A person adding a server makes four (register, authorize, callback, token).
    pub const OAUTH_ENDPOINTS: Self =
        Self { burst: 30, refill_every: Duration::from_secs(2), max_peers: 10_000 };

    /// The budget for wrong gateway keys at the consent page: 5 at once, one more a minute, so a
    /// stranger cannot guess keys there.
    pub const CONSENT_FAILURES: Self =
        Self { burst: 5, refill_every: Duration::from_secs(60), max_peers: 10_000 };
}

/// Why a peer may not spend now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OverBudget {
    /// This peer spent its budget; it regains a unit after `retry_after`.
    #[error("too many requests from this address; retry in {} s", retry_after.as_secs().max(1))]
    Peer {
        /// Time until the peer may spend again.
        retry_after: Duration,
    },
    /// The table of peers is full of peers still spending.
    #[error("too many addresses are using the gateway's OAuth endpoints at once; retry shortly")]
    Table,
}

impl crate::Reason for OverBudget {
    fn reason(&self) -> &'static str {
        match self {
            Self::Peer { .. } => "peer_over_budget",
            Self::Table => "budget_table_full",
        }
    }
}

/// The key a peer is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(u32),
    V6Prefix(u64),
    Unknown,
}

impl PeerKey {
    fn of(peer: Option<IpAddr>) -> Self {
        match peer.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Self::V4(u32::from(v4)),
            Some(IpAddr::V6(v6)) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
            None => Self::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Units left, as of `updated`.
    units: u32,
    updated: Instant,
}

/// Token buckets per peer, bounded in size (see the module docs).
#[derive(Debug)]
pub struct PeerBudget {
    config: BudgetConfig,
    buckets: HashMap<PeerKey, Bucket>,
    last_prune: Option<Instant>,
}

impl PeerBudget {
    /// An empty table with this shape.
    pub fn new(config: BudgetConfig) -> Self {
        Self { config, buckets: HashMap::new(), last_prune: None }
    }

    /// Spends one unit for `peer` at `now`, or says why it may not.
    pub fn spend(&mut self, peer: Option<IpAddr>, now: Instant) -> Result<(), OverBudget> {
        let key = PeerKey::of(peer);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.config.max_peers {
            self.prune(now);
            if self.buckets.len() >= self.config.max_peers {
                return Err(OverBudget::Table);
            }
        }
        let config = self.config;
        let bucket = self.buckets.entry(key).or_insert(Bucket { units: config.burst, updated: now });
        refill(bucket, &config, now);
        if bucket.units == 0 {
            let step = config.refill_every.max(Duration::from_millis(1));
            let waited = now.saturating_since(bucket.updated);
            return Err(OverBudget::Peer { retry_after: step.saturating_sub(waited) });
        }
        bucket.units -= 1;
        Ok(())
    }

    /// Peers tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets peers whose buckets are full again (they are as good as new). Runs only when the
    /// table is full and at most once per refill step, so a flood of new addresses cannot turn
    /// every request into a scan of the table.
    fn prune(&mut self, now: Instant) {
        let step = self.config.refill_every.max(Duration::from_millis(1));
        if self.last_prune.is_some_and(|last| now.saturating_since(last) < step) {
            return;
        }
        self.last_prune = Some(now);
        let config = self.config;
        self.buckets.retain(|_, bucket| {
            refill(bucket, &config, now);
            bucket.units < config.burst
        });
    }
}

/// Adds the units earned since the bucket was last updated, keeping the remainder of a step.
fn refill(bucket: &mut Bucket, config: &BudgetConfig, now: Instant) {
    let step = u64::try_from(config.refill_every.as_millis()).unwrap_or(u64::MAX).max(1);
    let elapsed = now.as_millis().saturating_sub(bucket.updated.as_millis());
    let earned = elapsed / step;
    if earned == 0 {
        return;
    }
    let units = u64::from(bucket.units).saturating_add(earned).min(u64::from(config.burst));
    bucket.units = u32::try_from(units).unwrap_or(config.burst);
    bucket.updated = if bucket.units == config.burst {
        now
    } else {
        Instant::from_millis(bucket.updated.as_millis() + earned * step)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;

    const SMALL: BudgetConfig = BudgetConfig { burst: 3, refill_every: Duration::from_secs(1), max_peers: 2 };

    fn at(millis: u64) -> Instant {
        Instant::from_millis(millis)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_peer_spends_its_burst_then_waits_for_refills() {
        let mut budget = PeerBudget::new(SMALL);
        for _ in 0..3 {
            assert_eq!(budget.spend(ip("192.0.2.1"), at(0)), Ok(()));
        }
        assert_eq!(
            budget.spend(ip("192.0.2.1"), at(400)),
            Err(OverBudget::Peer { retry_after: Duration::from_millis(600) })
        );
        // One unit back after one step, not more.
        assert_eq!(budget.spend(ip("192.0.2.1"), at(1_000)), Ok(()));
        assert!(budget.spend(ip("192.0.2.1"), at(1_500)).is_err());
        // Another peer is untouched.
        assert_eq!(budget.spend(ip("192.0.2.2"), at(1_500)), Ok(()));
        // A long quiet period refills up to the burst and no further.
        for _ in 0..3 {
            assert_eq!(budget.spend(ip("192.0.2.1"), at(60_000)), Ok(()));
        }
        assert!(budget.spend(ip("192.0.2.1"), at(60_000)).is_err());
    }

    #[test]
    fn partial_steps_are_kept() {
        let mut budget = PeerBudget::new(SMALL);
        for _ in 0..3 {
            budget.spend(ip("192.0.2.1"), at(0)).unwrap();
        }
        // 1.5 steps earn one unit; the half step counts towards the next.
        assert_eq!(budget.spend(ip("192.0.2.1"), at(1_500)), Ok(()));
        assert_eq!(budget.spend(ip("192.0.2.1"), at(2_000)), Ok(()));
        assert!(budget.spend(ip("192.0.2.1"), at(2_100)).is_err());
    }

    #[test]
    fn ipv6_peers_share_a_slash_64_and_mapped_ipv4_is_ipv4() {
        let mut budget = PeerBudget::new(SMALL);
        for last in ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:1"] {
            budget.spend(ip(last), at(0)).unwrap();
        }
        assert!(budget.spend(ip("2001:db8::9"), at(0)).is_err());
        assert_eq!(budget.len(), 1);
        for _ in 0..3 {
            budget.spend(ip("::ffff:192.0.2.7"), at(0)).unwrap();
        }
        assert!(budget.spend(ip("192.0.2.7"), at(0)).is_err());
        assert_eq!(budget.len(), 2);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_only_refilled_peers() {
        let mut budget = PeerBudget::new(SMALL);
        budget.spend(ip("192.0.2.1"), at(0)).unwrap();
        budget.spend(ip("192.0.2.2"), at(0)).unwrap();
        // Full of peers still spending: a third is refused, the table does not grow.
        assert_eq!(budget.spend(ip("192.0.2.3"), at(500)), Err(OverBudget::Table));
        assert_eq!(budget.len(), 2);
        // Known peers still spend.
        assert_eq!(budget.spend(ip("192.0.2.1"), at(600)), Ok(()));
        // Once both have refilled, they are forgotten and the newcomer gets in.
        assert_eq!(budget.spend(ip("192.0.2.3"), at(10_000)), Ok(()));
        assert_eq!(budget.len(), 1);
        assert!(!budget.is_empty());
    }

    #[test]
    fn pruning_runs_at_most_once_per_step() {
        let mut budget = PeerBudget::new(SMALL);
        budget.spend(ip("192.0.2.1"), at(0)).unwrap();
        budget.spend(ip("192.0.2.2"), at(0)).unwrap();
        assert_eq!(budget.spend(ip("192.0.2.3"), at(100)), Err(OverBudget::Table));
        // Both peers would have refilled by 5 s, but a prune ran at 100 ms; the next may run
        // one step later, which 5 s is.
        assert_eq!(budget.spend(ip("192.0.2.3"), at(5_000)), Ok(()));
        let mut fresh = PeerBudget::new(SMALL);
        fresh.spend(ip("192.0.2.1"), at(0)).unwrap();
        fresh.spend(ip("192.0.2.2"), at(0)).unwrap();
        assert_eq!(fresh.spend(ip("192.0.2.3"), at(100)), Err(OverBudget::Table));
        // Within the same step no second scan happens, even though 192.0.2.x would not be full.
        assert_eq!(fresh.spend(ip("192.0.2.4"), at(900)), Err(OverBudget::Table));
    }

    #[test]
    fn separate_slash_64s_are_separate_peers_and_refusals_have_codes() {
        let mut budget = PeerBudget::new(SMALL);
        assert!(budget.is_empty());
        for _ in 0..3 {
            budget.spend(ip("2001:db8:0:1::1"), at(0)).unwrap();
        }
        assert_eq!(budget.spend(ip("2001:db8:0:2::1"), at(0)), Ok(()), "another /64 is another peer");
        let peer = budget.spend(ip("2001:db8:0:1::9"), at(0)).unwrap_err();
        assert_eq!(peer.reason(), "peer_over_budget");
        assert_eq!(budget.spend(ip("192.0.2.1"), at(0)).unwrap_err().reason(), "budget_table_full");
    }

    #[test]
    fn the_next_prune_comes_exactly_one_step_later() {
        let prepared = || {
            let mut budget = PeerBudget::new(SMALL);
            budget.spend(ip("192.0.2.1"), at(0)).unwrap();
            budget.spend(ip("192.0.2.2"), at(0)).unwrap();
            assert_eq!(budget.spend(ip("192.0.2.3"), at(100)), Err(OverBudget::Table));
            budget
        };
        // Both peers have refilled at 1,050 ms, but the last scan was 950 ms ago.
        assert_eq!(prepared().spend(ip("192.0.2.3"), at(1_050)), Err(OverBudget::Table));
        // Exactly one step after it, the next scan runs and forgets them.
        assert_eq!(prepared().spend(ip("192.0.2.3"), at(1_100)), Ok(()));
    }

    #[test]
    fn unknown_peers_share_one_bucket() {
        let mut budget = PeerBudget::new(SMALL);
        for _ in 0..3 {
            budget.spend(None, at(0)).unwrap();
        }
        assert!(budget.spend(None, at(0)).is_err());
    }
}
