//! DNS discovery: the host names in static pools' `instances`, resolved again and again.
//!
//! `instances = ["fn.default.svc.cluster.local:9000"]` stands for every A and AAAA
//! record of the name (a Kubernetes headless Service has one per ready pod). A static
//! pool with names runs one [`follow`] task: it resolves them at once when the pool
//! starts, then every `discovery.interval`, and hands the pool the difference
//! ([`Pool::set_discovered`]): new addresses join warm, vanished ones leave rotation at
//! once and finish what they have in flight.
//!
//! What an answer means, per name:
//! - records: the name's addresses, exactly those;
//! - NXDOMAIN, or NOERROR without records (a Service scaled to zero): no address, so
//!   the name's instances leave the pool;
//! - anything else (a timeout, SERVFAIL, REFUSED, no nameserver reachable): nothing is
//!   learnt, and the last good set stays. The change of state is logged (a warning when
//!   lookups start failing, an info line when they answer again), not every interval.
//!
//! One resolver serves the whole gateway. It caches nothing: each round asks the
//! nameserver, so a changed record is seen at the next interval whatever its TTL.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use parking_lot::Mutex;
use tokio::time::MissedTickBehavior;

use crate::config::DiscoveryConfig;
use crate::pool::Pool;

/// The longest one lookup may take, whatever the interval.
const LOOKUP_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// The gateway's resolver and how often names are resolved, shared by every pool.
pub struct Discovery {
    config: DiscoveryConfig,
    /// Built on first use, on the runtime of the first pool that needs it; a failed
    /// build (an unreadable resolv.conf) is tried again next round.
    resolver: Mutex<Option<TokioResolver>>,
}

/// One host name of a pool's `instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// As written (`svc.ns.svc:9000`): each of its instances is reached with this `Host`.
    pub authority: String,
    pub host: String,
    pub port: u16,
}

/// What one lookup of a name says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name's addresses; empty for NXDOMAIN or an answer without records.
    Addresses(Vec<SocketAddr>),
    /// Nothing is known (timeout, SERVFAIL, no nameserver): keep what was known.
    Failed(String),
}

impl Discovery {
    pub fn new(config: &DiscoveryConfig) -> Discovery {
        Discovery {
            config: config.clone(),
            resolver: Mutex::new(None),
        }
    }

    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    fn resolver(&self) -> Result<TokioResolver, ResolveError> {
        let mut slot = self.resolver.lock();
        if let Some(resolver) = &*slot {
            return Ok(resolver.clone());
        }
        let mut builder = match self.config.nameserver {
            // Only that server, over UDP and (for truncated answers) TCP; not /etc/hosts.
            Some(ns) => {
                let servers = NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true);
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                );
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
            None => TokioResolver::builder_tokio()?,
        };
        let options = builder.options_mut();
        options.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        // No cache: every round asks, so a change is seen at the next interval.
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.timeout = self.config.interval.min(LOOKUP_TIMEOUT_MAX);
        let resolver = builder.build();
        *slot = Some(resolver.clone());
        Ok(resolver)
    }

    /// Resolves `host` to its A and AAAA records, with `port`.
    pub async fn lookup(&self, host: &str, port: u16) -> Answer {
        let resolver = match self.resolver() {
            Ok(resolver) => resolver,
            Err(e) => return Answer::Failed(format!("no resolver: {e}")),
        };
        match resolver.lookup_ip(host).await {
            Ok(found) => {
                let mut addrs: Vec<SocketAddr> =
                    found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                addrs.sort_unstable();
                addrs.dedup();
                Answer::Addresses(addrs)
            }
            Err(e) if is_no_address(&e) => Answer::Addresses(Vec::new()),
            Err(e) => Answer::Failed(e.to_string()),
        }
    }
}

/// NXDOMAIN, or NOERROR without records: the nameserver answered that there is no
/// address (as opposed to not answering, or failing to).
fn is_no_address(e: &ResolveError) -> bool {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(
                *response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        }
        _ => false,
    }
}

/// Which of `current` leave (their indices) and which of `desired` join: the
/// difference between what a pool has and what its names resolve to now.
pub fn diff<'d, K: Eq + Hash>(current: &[K], desired: &'d [K]) -> (Vec<usize>, Vec<&'d K>) {
    let want: HashSet<&K> = desired.iter().collect();
    let have: HashSet<&K> = current.iter().collect();
    let leaving = (0..current.len())
        .filter(|&i| !want.contains(&current[i]))
        .collect();
    let mut seen = HashSet::new();
    let joining = desired
        .iter()
        .filter(|k| !have.contains(k) && seen.insert(*k))
        .collect();
    (leaving, joining)
}

/// How the lookups of one name have been going, for logging changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Answering,
    Empty,
    Failing,
}

/// One name a pool follows: its last good addresses and how its lookups go.
struct Followed {
    name: Name,
    addrs: Vec<SocketAddr>,
    health: Health,
}

/// The pool's discovery task: resolves `names` now and every interval, and applies
/// each round's addresses to the pool. Runs until the pool closes (which aborts it).
pub async fn follow(pool: Arc<Pool>, names: Vec<Name>, discovery: Arc<Discovery>) {
    let mut followed: Vec<Followed> = names
        .into_iter()
        .map(|name| Followed {
            name,
            addrs: Vec::new(),
            health: Health::Unknown,
        })
        .collect();
    let mut ticks = tokio::time::interval(discovery.interval());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // The first tick is immediate: the pool fills as soon as DNS answers.
        ticks.tick().await;
        for f in &mut followed {
            let answer = discovery.lookup(&f.name.host, f.name.port).await;
            f.apply(pool.function(), answer);
        }
        let desired: Vec<(String, SocketAddr)> = followed
            .iter()
            .flat_map(|f| f.addrs.iter().map(|a| (f.name.authority.clone(), *a)))
            .collect();
        pool.set_discovered(&desired);
    }
}

impl Followed {
    fn apply(&mut self, function: &str, answer: Answer) {
        let name = &self.name.authority;
        let health = match answer {
            Answer::Addresses(addrs) => {
                self.addrs = addrs;
                if self.addrs.is_empty() {
                    Health::Empty
                } else {
                    Health::Answering
                }
            }
            Answer::Failed(why) => {
                if self.health != Health::Failing {
                    tracing::warn!(
                        function,
                        name = %name,
                        error = %why,
                        "DNS lookup failed; keeping the last {} address(es) until it answers",
                        self.addrs.len()
                    );
                }
                Health::Failing
            }
        };
        match (self.health, health) {
            (Health::Failing, Health::Answering | Health::Empty) => tracing::info!(
                function,
                name = %name,
                "DNS lookups answer again"
            ),
            (old, Health::Empty) if old != Health::Empty => tracing::warn!(
                function,
                name = %name,
                "host name resolves to no address; no instance behind it"
            ),
            _ => {}
        }
        self.health = health;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<(String, SocketAddr)> {
        v.iter()
            .map(|a| ("svc:80".to_owned(), a.parse().unwrap()))
            .collect()
    }

    #[test]
    fn the_difference_is_what_leaves_and_what_joins() {
        let current = keys(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let desired = keys(&["10.0.0.3:80", "10.0.0.4:80", "10.0.0.1:80", "10.0.0.4:80"]);
        let (leaving, joining) = diff(&current, &desired);
        assert_eq!(leaving, [1]);
        assert_eq!(joining, [&desired[1]]);
    }

    #[test]
    fn an_empty_answer_empties_and_a_first_answer_fills() {
        let current = keys(&["10.0.0.1:80", "10.0.0.2:80"]);
        let (leaving, joining) = diff(&current, &[]);
        assert_eq!((leaving, joining.len()), (vec![0, 1], 0));
        let desired = keys(&["10.0.0.1:80"]);
        let (leaving, joining) = diff(&[], &desired);
        assert_eq!((leaving.len(), joining), (0, vec![&desired[0]]));
        let (leaving, joining) = diff(&desired, &desired);
        assert!(leaving.is_empty() && joining.is_empty());
    }

    /// The same address behind two names is two instances (each with its own `Host`).
    #[test]
    fn names_are_part_of_the_key() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let current = vec![("a:80".to_owned(), addr)];
        let desired = vec![("b:80".to_owned(), addr)];
        let (leaving, joining) = diff(&current, &desired);
        assert_eq!((leaving, joining), (vec![0], vec![&desired[0]]));
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_addresses() {
        let mut f = Followed {
            name: Name {
                authority: "svc:80".into(),
                host: "svc".into(),
                port: 80,
            },
            addrs: Vec::new(),
            health: Health::Unknown,
        };
        let addrs: Vec<SocketAddr> = vec!["10.0.0.1:80".parse().unwrap()];
        f.apply("f", Answer::Addresses(addrs.clone()));
        assert_eq!(
            (f.addrs.clone(), f.health),
            (addrs.clone(), Health::Answering)
        );
        f.apply("f", Answer::Failed("timed out".into()));
        assert_eq!((f.addrs.clone(), f.health), (addrs, Health::Failing));
        f.apply("f", Answer::Addresses(Vec::new()));
        assert_eq!((f.addrs.len(), f.health), (0, Health::Empty));
    }
}
