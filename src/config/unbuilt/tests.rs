use crate::config::testing::*;

#[test]
fn timers_are_refused_as_not_built_yet() {
    let text = format!("{FUNCTION}[[functions.timers]]\nname = \"t\"\ncron = \"* * * * * * *\"\n");
    let e = one_error(&text);
    assert_eq!(e.location, at(4, 13));
    assert_eq!(e.message, "timer triggers are not supported yet");
}

#[test]
fn async_is_refused_as_not_built_yet() {
    let e = one_error("[async]\nstore = \"embedded\"\n");
    assert_eq!(e.location, at(1, 2));
    assert_eq!(e.message, "asynchronous invocations are not supported yet");
}
