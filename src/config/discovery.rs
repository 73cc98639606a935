//! `[discovery]`: how often the host names in static pools' `instances` are resolved
//! again, and which nameserver answers.

use std::time::Duration;

use super::walk::{Ctx, Section};
use super::DiscoveryConfig;

const DISCOVERY_KEYS: &[&str] = &["interval", "nameserver"];

pub(super) fn read_discovery(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> DiscoveryConfig {
    ctx.check_keys(s, DISCOVERY_KEYS);
    let defaults = DiscoveryConfig::default();
    let interval = ctx.get_duration(s, "interval", defaults.interval, true);
    // Below this a lookup could still be on its way when the next one is due.
    const MIN_INTERVAL: Duration = Duration::from_millis(100);
    if interval < MIN_INTERVAL {
        if let Some((_, value)) = s.get("interval") {
            let path = s.key_path("interval");
            ctx.error(value.span(), format!("{path}: must be at least 100ms"));
        }
    }
    // The default is a placeholder: `nameserver` is optional, and absent it is `None`.
    let nameserver = s
        .get("nameserver")
        .map(|_| ctx.get_addr(s, "nameserver", std::net::SocketAddr::from(([0; 4], 53))));
    DiscoveryConfig {
        interval: interval.max(MIN_INTERVAL),
        nameserver,
    }
}

#[cfg(test)]
mod tests;
