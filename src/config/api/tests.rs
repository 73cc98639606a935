use crate::config::testing::*;

const KEY: &str = "[[api.keys]]\nsecret_id = \"AKIDone\"\nsecret_key = \"${API_KEY}\"\n";

#[test]
fn the_endpoint_is_off_without_keys_and_on_with_one() {
    let config = ok(FUNCTION);
    assert!(!config.api.enabled());
    let config = ok("[api]\n");
    assert!(!config.api.enabled());

    let config = parse_with(KEY, &[("API_KEY", "s3cret-value")]).unwrap();
    assert!(config.api.enabled());
    assert_eq!(config.api.keys.len(), 1);
    assert_eq!(config.api.keys[0].secret_id, "AKIDone");
    let key = config.api.secret_key("AKIDone").map(|k| k.expose());
    assert_eq!(key, Some("s3cret-value"));
    assert!(config.api.secret_key("AKIDother").is_none());
}

#[test]
fn both_keys_are_required_and_not_empty() {
    let all = errors("[[api.keys]]\n");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0].location, path("api.keys[0].secret_id"));
    assert_eq!(all[0].message, "missing required key `secret_id`");
    assert_eq!(all[1].location, path("api.keys[0].secret_key"));

    let e = one_error("[[api.keys]]\nsecret_id = \"\"\nsecret_key = \"k\"\n");
    assert_eq!(e.location, at(2, 13));
    assert_eq!(
        e.message,
        "api.keys[0].secret_id: invalid value: must not be empty"
    );

    let all = errors_with(KEY, &[("API_KEY", "")]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].location, at(3, 14));
    assert_eq!(all[0].message, "api.keys[0].secret_key: must not be empty");
}

#[test]
fn a_duplicate_secret_id_is_an_error_at_its_position() {
    let text = format!("{KEY}[[api.keys]]\nsecret_id = \"AKIDone\"\nsecret_key = \"other\"\n");
    let all = errors_with(&text, &[("API_KEY", "k")]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].location, at(5, 13));
    assert_eq!(
        all[0].message,
        "api.keys[1].secret_id: duplicate secret_id \"AKIDone\": already defined by api.keys[0]"
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_reported() {
    let e = one_error("[api]\nkey = []\n");
    assert!(e.message.contains("key"), "{}", e.message);
    let e = one_error("[[api.keys]]\nsecret_id = \"a\"\nsecret_key = 5\n");
    assert_eq!(
        e.message,
        "api.keys[0].secret_key: expected a string, found integer"
    );
}

#[test]
fn secret_keys_never_appear_in_messages_or_debug_output() {
    let secret = "hunter2-very-secret";
    let all = errors_with(KEY, &[("API_KEY", "hunter2-very-secret\u{7}")]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0].message.contains("control character"));
    for e in &all {
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }
    let config = parse_with(KEY, &[("API_KEY", secret)]).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains(secret), "{debug}");
    assert!(debug.contains("AKIDone"));
}
