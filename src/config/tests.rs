use std::path::Path;

use crate::config::parse;
use crate::config::testing::*;

#[test]
fn errors_display_as_the_contract_says() {
    let err = parse("[[functions]]\nname = 1\n", Path::new("g.toml"), &no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "error: g.toml: functions[0]: one of `instances` or `launch` is required\n\
         error: g.toml:2:8: functions[0].name: expected a string, found integer"
    );
}
