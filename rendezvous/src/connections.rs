//! Connection bounds of the HTTPS server: how many connections one source may hold, and when a
//! connection counts as idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

/// Who a connection is counted against: an IPv4 address, or the /64 prefix of an IPv6 address
/// (one subscriber usually holds a whole /64, so counting single IPv6 addresses bounds nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// One IPv4 address (an IPv4-mapped IPv6 address counts as its IPv4 address).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix64([u8; 8]),
}

impl Source {
    /// The source `ip` is counted against.
    pub fn of(ip: IpAddr) -> Self {
        match unmapped(ip) {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => Self::V6Prefix64(leading(&v6.octets())),
        }
    }
}

/// A network for rate limits: an IPv4 /24 or an IPv6 /48 (roughly one customer or site), so
/// that taking a few more addresses of one's own network buys no more attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourcePrefix {
    /// The first 24 bits of an IPv4 address (an IPv4-mapped IPv6 address counts as IPv4).
    V4([u8; 3]),
    /// The first 48 bits of an IPv6 address.
    V6([u8; 6]),
}

impl SourcePrefix {
    /// The prefix `ip` belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match unmapped(ip) {
            IpAddr::V4(v4) => Self::V4(leading(&v4.octets())),
            IpAddr::V6(v6) => Self::V6(leading(&v6.octets())),
        }
    }
}

/// `ip`, with an IPv4-mapped IPv6 address taken as the IPv4 address it carries.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The first `N` bytes of `octets` (`N` is never more than its length here).
fn leading<const N: usize>(octets: &[u8]) -> [u8; N] {
    let mut prefix = [0u8; N];
    prefix.copy_from_slice(&octets[..N]);
    prefix
}

/// Open connections per source, bounded. Cloning shares the counts.
#[derive(Debug, Clone)]
pub struct PerSource {
    max: usize,
    open: Arc<Mutex<HashMap<Source, usize>>>,
}

impl PerSource {
    /// At most `max` connections per source.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for a new connection from `ip`, or `None` when its source holds `max` already.
    /// The slot is given back when the returned guard is dropped.
    pub fn admit(&self, ip: IpAddr) -> Option<SourceSlot> {
        let source = Source::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(source).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            source,
            open: self.open.clone(),
        })
    }

    /// Connections open from `ip`'s source.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&Source::of(ip)).copied().unwrap_or(0)
    }
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct SourceSlot {
    source: Source,
    open: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended: a connection is idle while
/// none is in flight. A long poll is in flight, so it never makes its connection idle.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    /// A connection that opens now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection became idle, or `None` while a request is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last_end.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_of_one_64_prefix_share_a_source_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:198.18.0.1".parse().unwrap();
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(v4));
        assert_ne!(
            Source::of(v4),
            Source::of("198.18.0.2".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn rate_limit_prefixes_are_ipv4_24_and_ipv6_48() {
        let of = |s: &str| SourcePrefix::of(s.parse().unwrap());
        assert_eq!(of("198.18.7.1"), of("198.18.7.254"));
        assert_ne!(of("198.18.7.1"), of("198.18.8.1"));
        assert_eq!(of("::ffff:198.18.7.9"), of("198.18.7.1"));
        assert_eq!(of("2001:db8:1::1"), of("2001:db8:1:ffff::2"));
        assert_ne!(of("2001:db8:1::1"), of("2001:db8:2::1"));
    }

    #[test]
    fn a_source_gets_at_most_max_slots_and_dropping_one_frees_it() {
        let limit = PerSource::new(2);
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let other: IpAddr = "198.18.0.2".parse().unwrap();
        let first = limit.admit(ip).unwrap();
        let _second = limit.admit(ip).unwrap();
        assert!(limit.admit(ip).is_none());
        assert!(
            limit.admit(other).is_some(),
            "another source is not affected"
        );
        drop(first);
        assert_eq!(limit.open(ip), 1);
        assert!(limit.admit(ip).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_request_is_in_flight() {
        let activity = Activity::new();
        let opened = activity.idle_since().unwrap();
        let request = activity.begin();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(activity.idle_since(), None);
        drop(request);
        let since = activity.idle_since().unwrap();
        assert_eq!(since - opened, std::time::Duration::from_secs(5));
    }
}
