use crate::config::testing::*;

#[test]
fn a_short_list_of_allowed_keys_is_spelled_out() {
    let e = one_error("[platform]\nxyz = \"1\"\n");
    assert!(
        e.message.ends_with("allowed keys: region, appid, uin"),
        "{}",
        e.message
    );
    let e = one_error("[server]\nlistne = \"127.0.0.1:1\"\n");
    assert!(
        e.message.contains("did you mean `listen`?"),
        "{}",
        e.message
    );
}

#[test]
fn columns_are_counted_in_characters() {
    let e = one_error("platform = { region = \"ééé\", bogus = \"1\" }\n");
    assert_eq!(e.location, at(1, 30));
}

#[test]
fn crlf_line_endings() {
    let e = one_error("[server]\r\n\r\nfoo = 1\r\n");
    assert_eq!(e.location, at(3, 1));
}
