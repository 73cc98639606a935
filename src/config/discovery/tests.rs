use std::time::Duration;

use crate::config::testing::*;
use crate::config::DiscoveryConfig;

#[test]
fn defaults_without_the_section() {
    assert_eq!(ok("").discovery, DiscoveryConfig::default());
    assert_eq!(
        DiscoveryConfig::default(),
        DiscoveryConfig {
            interval: Duration::from_secs(5),
            nameserver: None,
        }
    );
}

#[test]
fn every_key_is_read() {
    let config = ok("[discovery]\ninterval = \"200ms\"\nnameserver = \"127.0.0.1:5353\"\n");
    assert_eq!(
        config.discovery,
        DiscoveryConfig {
            interval: Duration::from_millis(200),
            nameserver: Some("127.0.0.1:5353".parse().unwrap()),
        }
    );
}

#[test]
fn bad_values_are_errors_with_a_position() {
    let all = errors(
        "[discovery]\ninterval = \"10ms\"\nnameserver = \"dns.local:53\"\nttl = 1\n\
         [[functions]]\nname = \"a\"\ninstances = [\"127.0.0.1:1\"]\n",
    );
    let found: Vec<(&crate::config::Location, &str)> = all
        .iter()
        .map(|e| (&e.location, e.message.as_str()))
        .collect();
    assert_eq!(found.len(), 3, "{all:#?}");
    assert!(found.contains(&(&at(2, 12), "discovery.interval: must be at least 100ms")));
    assert!(found.contains(&(
        &at(3, 14),
        "discovery.nameserver: invalid address \"dns.local:53\": expected an IP address and a \
         port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
    )));
    assert!(found.iter().any(|(_, m)| m.contains("ttl")), "{all:#?}");
    assert_eq!(
        one_error("[discovery]\ninterval = \"0s\"\n").location,
        at(2, 12)
    );
}
