use crate::asynchronous::cron::Schedule;
use crate::config::testing::*;

/// `FUNCTION` with `timers` appended (each a `[[functions.timers]]` body).
fn with_timers(timers: &[&str]) -> String {
    let mut text = FUNCTION.to_string();
    for t in timers {
        text.push_str("[[functions.timers]]\n");
        text.push_str(t);
    }
    text
}

#[test]
fn a_timer_with_its_defaults() {
    let config = ok(&with_timers(&[
        "name = \"every-minute\"\ncron = \"0 */1 * * * * *\"\n",
    ]));
    let [t] = config.functions[0].timers.as_slice() else {
        panic!("one timer expected");
    };
    assert_eq!(t.name, "every-minute");
    assert_eq!(t.cron, "0 */1 * * * * *");
    assert_eq!(t.schedule, Schedule::parse("0 */1 * * * * *").unwrap());
    assert_eq!(t.message, "");
    assert!(t.enabled);
}

#[test]
fn every_key_is_read() {
    let config = ok(&with_timers(&[
        "name = \"a\"\ncron = \"*/5 * * * *\"\nmessage = \"tick\"\nenabled = false\n",
        "name = \"b_2\"\ncron = \"0 0 12 * * SUN *\"\n",
    ]));
    let timers = &config.functions[0].timers;
    assert_eq!(timers.len(), 2);
    assert_eq!(timers[0].message, "tick");
    assert!(!timers[0].enabled);
    assert_eq!(timers[1].name, "b_2");
    assert!(config.functions[0].timers[1].enabled);
}

#[test]
fn name_and_cron_are_required() {
    let all = errors(&with_timers(&["message = \"x\"\n"]));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0].location, path("functions[0].timers[0].name"));
    assert_eq!(all[0].message, "missing required key `name`");
    assert_eq!(all[1].location, path("functions[0].timers[0].cron"));
    assert_eq!(all[1].message, "missing required key `cron`");
}

#[test]
fn names_are_checked_and_unique_within_the_function() {
    let e = one_error(&with_timers(&["name = \"a b\"\ncron = \"* * * * *\"\n"]));
    assert_eq!(e.location, at(5, 8));
    assert_eq!(
        e.message,
        "functions[0].timers[0].name: invalid timer name \"a b\": use only letters, digits, \
         `-` and `_`"
    );
    let e = one_error(&with_timers(&[
        "name = \"t\"\ncron = \"* * * * *\"\n",
        "name = \"t\"\ncron = \"0 * * * *\"\n",
    ]));
    assert_eq!(e.location, at(8, 8));
    assert_eq!(
        e.message,
        "functions[0].timers[1].name: duplicate timer \"t\": already defined by timers[0] of \
         this function"
    );
    // Another function may use the same name.
    let two = format!(
        "{}[[functions]]\nname = \"other\"\ninstances = [\"127.0.0.1:9002\"]\n\
         [[functions.timers]]\nname = \"t\"\ncron = \"* * * * *\"\n",
        with_timers(&["name = \"t\"\ncron = \"* * * * *\"\n"])
    );
    assert_eq!(ok(&two).functions[1].timers[0].name, "t");
}

#[test]
fn a_bad_cron_points_into_the_string() {
    // Line 6 is `cron = "0 0 25 * * * *"`: the value's quote is column 8, `25` column 13.
    let e = one_error(&with_timers(&["name = \"t\"\ncron = \"0 0 25 * * * *\"\n"]));
    assert_eq!(e.location, at(6, 13));
    assert_eq!(
        e.message,
        "functions[0].timers[0].cron: field 3 (hour): `25` is out of range 0-23"
    );
    let e = one_error(&with_timers(&[
        "name = \"t\"\ncron = '0 0 0 * * MON-FUN *'\n",
    ]));
    assert_eq!(e.location, at(6, 23));
    assert!(e.message.contains("field 6 (week): `FUN`"), "{}", e.message);
    // The wrong number of fields: the whole value.
    let e = one_error(&with_timers(&["name = \"t\"\ncron = \"* * *\"\n"]));
    assert_eq!(e.location, at(6, 8));
    assert!(
        e.message
            .starts_with("functions[0].timers[0].cron: expected 7 fields"),
        "{}",
        e.message
    );
}

#[test]
fn a_cron_from_a_variable_errs_at_the_value_naming_the_field() {
    let text = with_timers(&["name = \"t\"\ncron = \"0 0 ${HOUR} * * * *\"\n"]);
    let all = errors_with(&text, &[("HOUR", "99")]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].location, at(6, 8));
    assert_eq!(
        all[0].message,
        "functions[0].timers[0].cron: field 3 (hour): `99` is out of range 0-23"
    );
    let config = parse_with(&text, &[("HOUR", "7")]).unwrap();
    assert_eq!(config.functions[0].timers[0].cron, "0 0 7 * * * *");
}

#[test]
fn a_disabled_timer_is_still_checked() {
    let e = one_error(&with_timers(&[
        "name = \"t\"\ncron = \"61 * * * *\"\nenabled = false\n",
    ]));
    assert_eq!(e.location, at(6, 9));
}

#[test]
fn unknown_keys_and_types_are_refused() {
    let e = one_error(&with_timers(&[
        "name = \"t\"\ncron = \"* * * * *\"\nmesage = \"x\"\n",
    ]));
    assert_eq!(e.location, at(7, 1));
    assert!(
        e.message.contains("(did you mean `message`?)"),
        "{}",
        e.message
    );
    let e = one_error(&with_timers(&[
        "name = \"t\"\ncron = \"* * * * *\"\nenabled = \"yes\"\n",
    ]));
    assert_eq!(
        e.message,
        "functions[0].timers[0].enabled: expected a boolean (true or false), found string"
    );
    let e = one_error(&format!("{FUNCTION}timers = 1\n"));
    assert_eq!(
        e.message,
        "functions[0].timers: expected an array of tables ([[functions.timers]]), found integer"
    );
}

#[test]
fn web_functions_cannot_have_timers() {
    let text = "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"127.0.0.1:9001\"]\n\
                [[functions.timers]]\nname = \"t\"\ncron = \"* * * * *\"\n";
    let e = one_error(text);
    assert_eq!(e.location, at(5, 13));
    assert!(
        e.message.starts_with(
            "functions[0].timers: a web function (type = \"http\") cannot have timers"
        ),
        "{}",
        e.message
    );
}
