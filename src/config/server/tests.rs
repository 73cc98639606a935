use crate::config::testing::*;

#[test]
fn bad_addresses_and_clashing_listeners() {
    let all = errors("[server]\nlisten = \"localhost:80\"\n");
    assert!(all[0]
        .message
        .starts_with("server.listen: invalid address \"localhost:80\""));
    let e = one_error("[server]\nlisten = \"127.0.0.1:9090\"\n");
    assert!(e.message.contains("must differ"), "{}", e.message);
    // Port 0 (the system picks) on both is fine.
    ok("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
}

#[test]
fn client_limits_have_defaults_and_are_read() {
    let s = ok("").server;
    assert_eq!(s.header_read_timeout, std::time::Duration::from_secs(10));
    assert_eq!(s.client_idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(s.max_connections, 10_000);
    let s = ok(
        "[server]\nheader_read_timeout = \"250ms\"\nclient_idle_timeout = \"2m\"\n\
         max_connections = 5\n",
    )
    .server;
    assert_eq!(s.header_read_timeout, std::time::Duration::from_millis(250));
    assert_eq!(s.client_idle_timeout, std::time::Duration::from_secs(120));
    assert_eq!(s.max_connections, 5);
}

#[test]
fn client_limits_out_of_range_are_refused() {
    let all = errors(
        "[server]\nheader_read_timeout = \"0s\"\nclient_idle_timeout = \"0ms\"\n\
         max_connections = 0\n",
    );
    let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "server.header_read_timeout: must be greater than zero, found \"0s\"",
            "server.client_idle_timeout: must be greater than zero, found \"0ms\"",
            "server.max_connections: must be between 1 and 1048576, found 0",
        ]
    );
}

#[test]
fn admin_token_is_optional_resolved_and_never_empty() {
    assert_eq!(ok("").server.admin_token, None);
    let config = parse_with(
        "[server]\nadmin_token = \"${ADMIN_TOKEN}\"\n",
        &[("ADMIN_TOKEN", "t0ken-value")],
    )
    .unwrap();
    let token = config.server.admin_token.as_ref().unwrap();
    assert_eq!(token.expose(), "t0ken-value");
    assert!(!format!("{:?}", config.server).contains("t0ken-value"));
    let all = errors_with(
        "[server]\nadmin_token = \"${ADMIN_TOKEN}\"\n",
        &[("ADMIN_TOKEN", "")],
    );
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0]
        .message
        .starts_with("server.admin_token: must not be empty"));
    let e = one_error("[server]\nadmin_token = \"two words\"\n");
    assert!(!e.message.contains("two words"), "{}", e.message);
}
