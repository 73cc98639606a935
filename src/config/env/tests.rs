use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::config::testing::*;
use crate::config::{Location, Secret};

#[test]
fn a_missing_variable_is_named_at_the_value() {
    let all = errors(
        "[credentials]\nsecret_id = \"${SCF_SECRET_ID}\"\nsecret_key = \"${SCF_SECRET_KEY}\"\n",
    );
    let found: Vec<(&Location, &str)> = all
        .iter()
        .map(|e| (&e.location, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                &at(2, 13),
                "credentials.secret_id: environment variable SCF_SECRET_ID is not set"
            ),
            (
                &at(3, 14),
                "credentials.secret_key: environment variable SCF_SECRET_KEY is not set"
            ),
        ]
    );
}

#[test]
fn variables_resolve_in_any_string_before_it_is_interpreted() {
    let text = "[server]\nlisten = \"${HOST}:${PORT}\"\n\
                [credentials]\nsecret_id = \"id-${ID}\"\nsecret_key = \"${KEY}\"\nsession_token = \"${EMPTY}\"\n\
                [[functions]]\nname = \"${NAME}\"\ntimeout = \"${T}\"\nversion = \"$LATEST\"\n\
                instances = [\"${UPSTREAM}\"]\n";
    let vars = [
        ("HOST", "127.0.0.1"),
        ("PORT", "7000"),
        ("ID", "abc"),
        ("KEY", "k$y"),
        ("EMPTY", ""),
        ("NAME", "fn"),
        ("T", "250ms"),
        ("UPSTREAM", "127.0.0.1:9009"),
    ];
    let config = match parse_with(text, &vars) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    };
    assert_eq!(
        config.server.listen,
        "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
    );
    let creds = &config.credentials;
    assert_eq!(creds.secret_id.as_ref().map(Secret::expose), Some("id-abc"));
    assert_eq!(creds.secret_key.as_ref().map(Secret::expose), Some("k$y"));
    assert!(
        creds.session_token.is_none(),
        "an empty credential is not configured"
    );
    let f = &config.functions[0];
    assert_eq!(f.name, "fn");
    assert_eq!(f.timeout, Duration::from_millis(250));
    assert_eq!(f.version, "$LATEST");
    assert_eq!(static_instances(f)[0].authority(), "127.0.0.1:9009");
}

#[test]
fn expansion_rules() {
    let env = |name: &str| (name == "A").then(|| "x".to_string());
    assert_eq!(expand_env("$LATEST", &env), Ok("$LATEST".into()));
    assert_eq!(expand_env("a$b$", &env), Ok("a$b$".into()));
    assert_eq!(expand_env("${A}-${A}", &env), Ok("x-x".into()));
    assert_eq!(
        expand_env("${B}${C}", &env),
        Err(vec![
            "environment variable B is not set".to_string(),
            "environment variable C is not set".to_string()
        ])
    );
    assert!(expand_env("${A", &env).is_err());
    assert!(expand_env("${}", &env).is_err());
    assert!(expand_env("${A-B}", &env).is_err());
}
