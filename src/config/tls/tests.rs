use std::path::Path;
use std::time::Duration;

use rcgen::{CertifiedKey, KeyPair};

use crate::config::testing::*;
use crate::config::{parse, Location};

/// A directory with a self-signed certificate for `localhost` (`cert.pem`, `key.pem`)
/// and a second key (`other-key.pem`) that does not match it.
fn certs() -> tempdir::Dir {
    let dir = tempdir::Dir::new();
    let CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.0.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.0.join("key.pem"), signing_key.serialize_pem()).unwrap();
    let other = KeyPair::generate().unwrap();
    std::fs::write(dir.0.join("other-key.pem"), other.serialize_pem()).unwrap();
    std::fs::write(dir.0.join("empty.pem"), "").unwrap();
    dir
}

mod tempdir {
    use std::path::PathBuf;

    pub(super) struct Dir(pub(super) PathBuf);

    impl Dir {
        pub(super) fn new() -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "scf-gateway-tls-config-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Parses `text` as `gateway.toml` in `dir`.
fn parse_in(dir: &Path, text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    parse(text, &dir.join("gateway.toml"), &no_env)
}

#[test]
fn paths_are_relative_to_the_config_and_the_timeout_has_a_default() {
    let dir = certs();
    let config = parse_in(
        &dir.0,
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"./key.pem\"\n",
    )
    .unwrap();
    let tls = config.server.tls.unwrap();
    assert_eq!(tls.cert, dir.0.join("cert.pem"));
    assert_eq!(tls.key, dir.0.join("key.pem"));
    assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
    let text =
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nhandshake_timeout = \"250ms\"\n";
    let tls = parse_in(&dir.0, text).unwrap().server.tls.unwrap();
    assert_eq!(tls.handshake_timeout, Duration::from_millis(250));
    assert!(ok("").server.tls.is_none());
}

#[test]
fn missing_keys_and_bad_values_are_reported_with_positions() {
    let all = errors("[server.tls]\nhandshake_timeout = \"0s\"\nciphers = 1\n");
    let found: Vec<(&Location, &str)> = all
        .iter()
        .map(|e| (&e.location, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (&path("server.tls.cert"), "missing required key `cert`"),
            (&path("server.tls.key"), "missing required key `key`"),
            (&at(2, 21), "server.tls.handshake_timeout: must be greater than zero, found \"0s\""),
            (&at(3, 1), "unknown key \"ciphers\" in [server.tls]; allowed keys: cert, key, handshake_timeout"),
        ]
    );
    let e = one_error("[server]\ntls = \"on\"\n");
    assert_eq!(e.location, at(2, 7));
    assert_eq!(e.message, "server.tls: expected a table, found string");
}

#[test]
fn missing_and_unusable_files_point_at_their_key() {
    let dir = certs();
    let errors = |text: &str| parse_in(&dir.0, text).unwrap_err().errors;
    let e = errors("[server.tls]\ncert = \"nope.pem\"\nkey = \"key.pem\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].location, at(2, 8));
    let missing = dir.0.join("nope.pem");
    assert!(
        e[0].message.starts_with(&format!(
            "server.tls.cert: cannot read the certificate file \"{}\": ",
            missing.display()
        )),
        "{}",
        e[0].message
    );
    let e = errors("[server.tls]\ncert = \"empty.pem\"\nkey = \"key.pem\"\n");
    assert_eq!(e[0].location, at(2, 8));
    assert!(
        e[0].message.contains("no PEM certificate in"),
        "{}",
        e[0].message
    );
    // A certificate where the key should be.
    let e = errors("[server.tls]\ncert = \"cert.pem\"\nkey = \"cert.pem\"\n");
    assert_eq!(e[0].location, at(3, 7));
    assert!(
        e[0].message
            .starts_with("server.tls.key: no usable PEM private key"),
        "{}",
        e[0].message
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let dir = certs();
    let e = parse_in(
        &dir.0,
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"other-key.pem\"\n",
    )
    .unwrap_err()
    .errors;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].location, at(3, 7));
    assert_eq!(
        e[0].message,
        format!(
            "server.tls.key: the private key in \"{}\" does not match the certificate in \"{}\"",
            dir.0.join("other-key.pem").display(),
            dir.0.join("cert.pem").display()
        )
    );
}

#[test]
fn the_key_never_shows_in_errors_or_debug_output() {
    let dir = certs();
    let key = std::fs::read_to_string(dir.0.join("key.pem")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let config = parse_in(
        &dir.0,
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    )
    .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains(&body[..32]), "the key in Debug output");
    // A key file whose PEM is broken half-way: the message names the file only.
    let broken = format!("-----BEGIN PRIVATE KEY-----\n{}\n", &body[..40]);
    std::fs::write(dir.0.join("broken.pem"), broken).unwrap();
    let e = parse_in(
        &dir.0,
        "[server.tls]\ncert = \"cert.pem\"\nkey = \"broken.pem\"\n",
    )
    .unwrap_err();
    assert!(!e.to_string().contains(&body[..32]), "{e}");
}
