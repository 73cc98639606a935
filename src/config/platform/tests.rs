use crate::config::testing::*;

#[test]
fn secrets_never_appear_in_messages_or_debug_output() {
    let secret = "hunter2-very-secret";
    let text = "[credentials]\nsecret_id = \"${ID}\"\nsecret_key = \"${KEY}\"\n\
                session_token = \"${TOKEN\"\n[server]\nbogus = 1\n";
    let vars = [
        ("ID", "hunter2-very-secret"),
        ("KEY", "hunter2-very-secret\n"),
    ];
    let all = errors_with(text, &vars);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all[0]
        .message
        .starts_with("credentials.secret_key: contains a control character"));
    assert!(all[1]
        .message
        .starts_with("credentials.session_token: unterminated"));
    for e in &all {
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(!e.message.contains("TOKEN"), "{}", e.message);
    }

    let text = "[credentials]\nsecret_id = \"hunter2-very-secret\"\n";
    let config = ok(text);
    let debug = format!("{config:?}");
    assert!(!debug.contains(secret), "{debug}");
    assert!(debug.contains("***"));
    let wrong = one_error("[credentials]\nsecret_key = 1234567\n");
    assert_eq!(
        wrong.message,
        "credentials.secret_key: expected a string, found integer"
    );
}
