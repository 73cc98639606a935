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
