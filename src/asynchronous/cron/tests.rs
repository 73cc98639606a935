use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

/// A UTC time.
fn utc(year: i64, month: u32, day: u32, h: u64, m: u64, s: u64) -> SystemTime {
    let days = u64::try_from(days_from_civil(year, month, day)).unwrap();
    UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s)
}

fn schedule(expr: &str) -> Schedule {
    match Schedule::parse(expr) {
        Ok(s) => s,
        Err(e) => panic!("{expr:?} refused: {e}"),
    }
}

/// The next `n` ticks after `from`, as RFC 3339 strings.
fn ticks(expr: &str, from: SystemTime, n: usize) -> Vec<String> {
    let s = schedule(expr);
    let mut t = from;
    let mut out = Vec::new();
    for _ in 0..n {
        match s.next_after(t) {
            Some(next) => {
                assert!(next > t, "{expr}: {next:?} is not after {t:?}");
                out.push(rfc3339(next));
                t = next;
            }
            None => break,
        }
    }
    out
}

fn error(expr: &str) -> CronError {
    match Schedule::parse(expr) {
        Ok(s) => panic!("{expr:?} accepted: {s:?}"),
        Err(e) => e,
    }
}

/// Tuesday 8 December 2026, 03:00:00 UTC.
fn tuesday() -> SystemTime {
    utc(2026, 12, 8, 3, 0, 0)
}

// ---- dates -------------------------------------------------------------------------

#[test]
fn civil_dates_round_trip() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    assert_eq!(civil_from_days(days_from_civil(2100, 2, 29)), (2100, 3, 1));
    for day in (-1000..200_000).step_by(37) {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day);
    }
}

#[test]
fn rfc3339_is_utc_to_the_second() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(tuesday()), "2026-12-08T03:00:00Z");
    assert_eq!(
        rfc3339(utc(2028, 2, 29, 23, 59, 59) + Duration::from_millis(999)),
        "2028-02-29T23:59:59Z"
    );
}

// ---- fields ------------------------------------------------------------------------

#[test]
fn every_second() {
    for expr in ["* * * * * * *", "*/1 * * * * * *", "0-59 * * * * * *"] {
        assert_eq!(
            ticks(expr, tuesday(), 3),
            [
                "2026-12-08T03:00:01Z",
                "2026-12-08T03:00:02Z",
                "2026-12-08T03:00:03Z"
            ],
            "{expr}"
        );
    }
}

#[test]
fn next_is_strictly_after_even_within_a_second() {
    let s = schedule("0 */1 * * * * *");
    assert_eq!(
        s.next_after(tuesday()),
        Some(utc(2026, 12, 8, 3, 1, 0)),
        "a tick is not its own next"
    );
    let just_after = tuesday() + Duration::from_millis(1);
    assert_eq!(s.next_after(just_after), Some(utc(2026, 12, 8, 3, 1, 0)));
    let just_before = utc(2026, 12, 8, 3, 0, 59) + Duration::from_millis(999);
    assert_eq!(s.next_after(just_before), Some(utc(2026, 12, 8, 3, 1, 0)));
}

#[test]
fn lists_ranges_and_steps() {
    assert_eq!(
        ticks("5/20 * * * * * *", tuesday(), 4),
        [
            "2026-12-08T03:00:05Z",
            "2026-12-08T03:00:25Z",
            "2026-12-08T03:00:45Z",
            "2026-12-08T03:01:05Z"
        ]
    );
    assert_eq!(
        ticks("0 0,30 9-17/4 * * * *", tuesday(), 4),
        [
            "2026-12-08T09:00:00Z",
            "2026-12-08T09:30:00Z",
            "2026-12-08T13:00:00Z",
            "2026-12-08T13:30:00Z"
        ]
    );
    assert_eq!(
        ticks("0 0 0 1,15 */5 * *", tuesday(), 3),
        [
            "2027-01-01T00:00:00Z",
            "2027-01-15T00:00:00Z",
            "2027-06-01T00:00:00Z"
        ]
    );
    assert_eq!(
        ticks("0 0 23 * * * *", utc(2026, 12, 31, 23, 0, 0), 1),
        ["2027-01-01T23:00:00Z"],
        "into the next year"
    );
}

#[test]
fn the_five_field_form_fires_at_second_zero_of_any_year() {
    assert_eq!(
        ticks("*/15 * * * *", tuesday() + Duration::from_secs(1), 3),
        [
            "2026-12-08T03:15:00Z",
            "2026-12-08T03:30:00Z",
            "2026-12-08T03:45:00Z"
        ]
    );
    assert_eq!(
        ticks("30 2 1 1 *", tuesday(), 2),
        ["2027-01-01T02:30:00Z", "2028-01-01T02:30:00Z"]
    );
}

#[test]
fn week_days_count_from_sunday_zero_or_by_name() {
    // Sunday 13 December 2026.
    for expr in [
        "0 0 12 * * 0 *",
        "0 0 12 * * SUN *",
        "0 0 12 * * sun *",
        "0 12 * * Sun",
    ] {
        assert_eq!(
            ticks(expr, tuesday(), 2),
            ["2026-12-13T12:00:00Z", "2026-12-20T12:00:00Z"],
            "{expr}"
        );
    }
    assert_eq!(
        ticks("0 0 8 * * MON-FRI *", utc(2026, 12, 11, 9, 0, 0), 2),
        ["2026-12-14T08:00:00Z", "2026-12-15T08:00:00Z"],
        "Friday after 8 to Monday"
    );
    assert_eq!(
        ticks("0 0 0 * * 6,0 *", tuesday(), 3),
        [
            "2026-12-12T00:00:00Z",
            "2026-12-13T00:00:00Z",
            "2026-12-19T00:00:00Z"
        ]
    );
}

#[test]
fn months_by_number_or_name() {
    for expr in [
        "0 0 0 1 2-3 * *",
        "0 0 0 1 FEB-MAR * *",
        "0 0 0 1 feb,Mar * *",
    ] {
        assert_eq!(
            ticks(expr, tuesday(), 3),
            [
                "2027-02-01T00:00:00Z",
                "2027-03-01T00:00:00Z",
                "2028-02-01T00:00:00Z"
            ],
            "{expr}"
        );
    }
}

#[test]
fn day_and_week_both_restricted_match_either() {
    // The 13th or a Friday: Friday 11th, Sunday 13th, Friday 18th.
    assert_eq!(
        ticks("0 0 0 13 * 5 *", tuesday(), 3),
        [
            "2026-12-11T00:00:00Z",
            "2026-12-13T00:00:00Z",
            "2026-12-18T00:00:00Z"
        ]
    );
    // Only one restricted: that one decides.
    assert_eq!(
        ticks("0 0 0 13 * * *", tuesday(), 2),
        ["2026-12-13T00:00:00Z", "2027-01-13T00:00:00Z"]
    );
    assert_eq!(
        ticks("0 0 0 * * 5 *", tuesday(), 2),
        ["2026-12-11T00:00:00Z", "2026-12-18T00:00:00Z"]
    );
    // A stepped `*/1` is a restriction like any other than `*`.
    assert_eq!(
        ticks("0 0 0 */1 * 5 *", tuesday(), 2),
        ["2026-12-09T00:00:00Z", "2026-12-10T00:00:00Z"]
    );
}

#[test]
fn years_limit_the_schedule() {
    assert_eq!(
        ticks("0 0 0 1 1 * 2030,2032", tuesday(), 3),
        ["2030-01-01T00:00:00Z", "2032-01-01T00:00:00Z"]
    );
    assert_eq!(
        ticks("0 0 0 * * * 2027-2099/36", tuesday(), 2),
        ["2027-01-01T00:00:00Z", "2027-01-02T00:00:00Z"]
    );
    assert_eq!(schedule("0 0 0 1 1 * 2020").next_after(tuesday()), None);
    assert_eq!(
        schedule("0 0 0 31 12 * 2026").next_after(tuesday()),
        Some(utc(2026, 12, 31, 0, 0, 0))
    );
    assert_eq!(
        schedule("59 59 23 31 12 * *").next_after(utc(2099, 12, 31, 23, 59, 59)),
        None,
        "nothing past 2099"
    );
}

#[test]
fn leap_days_and_days_that_never_come() {
    assert_eq!(
        ticks("0 0 0 29 2 * *", tuesday(), 3),
        [
            "2028-02-29T00:00:00Z",
            "2032-02-29T00:00:00Z",
            "2036-02-29T00:00:00Z"
        ]
    );
    assert_eq!(schedule("0 0 0 30 2 * *").next_after(tuesday()), None);
    assert_eq!(
        ticks("0 0 0 31 * * *", tuesday(), 3),
        [
            "2026-12-31T00:00:00Z",
            "2027-01-31T00:00:00Z",
            "2027-03-31T00:00:00Z"
        ]
    );
}

#[test]
fn whitespace_between_fields_may_be_any() {
    assert_eq!(
        schedule("  0\t*/1  * * * * *  "),
        schedule("0 */1 * * * * *")
    );
}

// ---- errors ------------------------------------------------------------------------

#[test]
fn the_wrong_number_of_fields_is_refused_whole() {
    for expr in ["", "* * *", "* * * * * *", "* * * * * * * *"] {
        let e = error(expr);
        assert_eq!(e.field, None, "{expr}");
        assert_eq!(e.span, 0..expr.len());
        assert!(e.message.starts_with("expected 7 fields"), "{}", e.message);
    }
}

#[test]
fn errors_point_at_the_failing_part() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "0 0 25 * * * *",
            3,
            "25",
            "field 3 (hour): `25` is out of range 0-23",
        ),
        (
            "0 0 1,25 * * * *",
            3,
            "25",
            "field 3 (hour): `25` is out of range 0-23",
        ),
        (
            "60 * * * * * *",
            1,
            "60",
            "field 1 (second): `60` is out of range 0-59",
        ),
        (
            "60 * * * *",
            1,
            "60",
            "field 1 (minute): `60` is out of range 0-59",
        ),
        (
            "0 0 0 0 * * *",
            4,
            "0",
            "field 4 (day): `0` is out of range 1-31",
        ),
        (
            "0 0 0 * 13 * *",
            5,
            "13",
            "field 5 (month): `13` is out of range 1-12",
        ),
        (
            "0 0 0 * * 7 *",
            6,
            "7",
            "field 6 (week): `7` is out of range 0-6 (0 = Sunday)",
        ),
        (
            "0 0 0 * * * 2100",
            7,
            "2100",
            "field 7 (year): `2100` is out of range 1970-2099",
        ),
        (
            "*/0 * * * * * *",
            1,
            "0",
            "field 1 (second): step `0` must be at least 1",
        ),
        (
            "0 */x * * * * *",
            2,
            "x",
            "field 2 (minute): step `x` is not a positive number",
        ),
        (
            "0 0 5-3 * * * *",
            3,
            "5-3",
            "field 3 (hour): range `5-3` ends before it starts",
        ),
        (
            "0 0 0 * FOO * *",
            5,
            "FOO",
            "field 5 (month): `FOO` is not a number 1-12 or a name JAN-DEC",
        ),
        (
            "0 0 0 * * MON-FUN *",
            6,
            "FUN",
            "field 6 (week): `FUN` is not a number 0-6 or a name SUN-SAT",
        ),
        (
            "0 0 MON * * * *",
            3,
            "MON",
            "field 3 (hour): `MON` is not a number 0-23",
        ),
        (
            "0 0 ? * * * *",
            3,
            "?",
            "field 3 (hour): `?` is not a number 0-23",
        ),
        (
            "0 0 L * * * *",
            3,
            "L",
            "field 3 (hour): `L` is not a number 0-23",
        ),
        ("0 0 -5 * * * *", 3, "", "field 3 (hour): missing value"),
        (
            "1,,2 * * * * * *",
            1,
            "",
            "field 1 (second): empty list item",
        ),
        (
            "/5 * * * * * *",
            1,
            "",
            "field 1 (second): a step needs `*`, a value or a range before `/`",
        ),
        ("-1 * * * * * *", 1, "", "field 1 (second): missing value"),
    ];
    for &(expr, field, at, message) in cases {
        let e = error(expr);
        assert_eq!(e.field, Some(field), "{expr}");
        assert_eq!(e.message, message, "{expr}");
        assert_eq!(&expr[e.span.clone()], at, "{expr}: span {:?}", e.span);
    }
    // Positions are byte offsets into the whole expression.
    assert_eq!(error("0 0 1,25 * * * *").span, 6..8);
}
