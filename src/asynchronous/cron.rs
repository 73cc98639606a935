//! SCF's cron expressions, for timer triggers: parsed once at config time (with the byte
//! range of whatever is wrong, so the config error points into the string) and asked
//! for the next tick by the timers.
//!
//! The syntax is SCF's: 7 fields `sec min hour day month week year`, or the legacy 5
//! fields `min hour day month week` (seconds 0, any year); each field a list of `*`,
//! values and ranges, each optionally with a `/step`; months 1-12 or `JAN`-`DEC`, week
//! days 0-6 with 0 = Sunday or `SUN`-`SAT` (names in any case); years 1970-2099; UTC.
//! When both the day and the week field are restricted (neither is `*`), a day matches
//! if either does, as in standard cron; otherwise both must match. Hand-written rather
//! than a crate's: see docs/adr/0010-cron.md.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first and last year an expression can name.
pub const FIRST_YEAR: u32 = 1970;
pub const LAST_YEAR: u32 = 2099;

const SECONDS_PER_DAY: i64 = 86_400;

/// Every year from `FIRST_YEAR` to `LAST_YEAR` (130 bits).
const YEAR_ANY: Bits = [u128::MAX, (1 << (LAST_YEAR - FIRST_YEAR + 1 - 128)) - 1];

/// A parsed expression: the allowed values of each field, as bit sets.
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Bit n: second n.
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bit n: day n of the month (1-31).
    days: u32,
    /// Bit n: month n (1-12).
    months: u16,
    /// Bit n: week day n (0 = Sunday).
    weekdays: u8,
    /// Bit n: year `FIRST_YEAR + n` (130 years: two words).
    years: Bits,
    /// The day field is `*`.
    any_day: bool,
    /// The week field is `*`.
    any_weekday: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("seconds", &format_args!("{:#x}", self.seconds))
            .field("minutes", &format_args!("{:#x}", self.minutes))
            .field("hours", &format_args!("{:#x}", self.hours))
            .field("days", &format_args!("{:#x}", self.days))
            .field("months", &format_args!("{:#x}", self.months))
            .field("weekdays", &format_args!("{:#x}", self.weekdays))
            .field(
                "years",
                &format_args!("{:#x}:{:#x}", self.years[1], self.years[0]),
            )
            .finish()
    }
}

/// Why an expression was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// The field, 1-based as written; `None` for the expression as a whole (the wrong
    /// number of fields).
    pub field: Option<usize>,
    /// The bytes of the expression at fault.
    pub span: Range<usize>,
    /// What is wrong, naming the field (`field 3 (hour): ...`).
    pub message: String,
}

/// A set of up to 256 values, bit n standing for a field's `min + n`.
type Bits = [u128; 2];

fn has(bits: &Bits, n: u32) -> bool {
    bits.get((n / 128) as usize)
        .is_some_and(|word| word & (1u128 << (n % 128)) != 0)
}

/// Which field a [`Kind`] describes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Week,
    Year,
}

/// What one field accepts.
#[derive(Clone, Copy)]
struct Kind {
    slot: Slot,
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Kind = Kind {
    slot: Slot::Second,
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Kind = Kind {
    slot: Slot::Minute,
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Kind = Kind {
    slot: Slot::Hour,
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Kind = Kind {
    slot: Slot::Day,
    name: "day",
    min: 1,
    max: 31,
    names: &[],
};
/// `names[i]` is month `i + 1`.
const MONTH: Kind = Kind {
    slot: Slot::Month,
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
/// `names[i]` is week day `i`.
const WEEK: Kind = Kind {
    slot: Slot::Week,
    name: "week",
    min: 0,
    max: 6,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};
const YEAR: Kind = Kind {
    slot: Slot::Year,
    name: "year",
    min: FIRST_YEAR,
    max: LAST_YEAR,
    names: &[],
};

/// One field being parsed: its kind, its place, and where it is in the expression.
struct Field<'e> {
    kind: Kind,
    /// 1-based, as written.
    index: usize,
    text: &'e str,
    /// Byte offset of `text` in the expression.
    offset: usize,
}

impl Field<'_> {
    fn error(&self, part: Range<usize>, what: impl fmt::Display) -> CronError {
        CronError {
            field: Some(self.index),
            span: self.offset + part.start..self.offset + part.end,
            message: format!("field {} ({}): {what}", self.index, self.kind.name),
        }
    }

    /// The set of values (bit n: value `min + n`) and whether the field is `*`.
    fn parse(&self) -> Result<(Bits, bool), CronError> {
        if self.text == "*" {
            return Ok((self.range_bits(self.kind.min, self.kind.max, 1), true));
        }
        let mut bits: Bits = [0; 2];
        let mut start = 0;
        for item in self.text.split(',') {
            let range = start..start + item.len();
            start = range.end + 1;
            let more = self.item(item, range)?;
            bits[0] |= more[0];
            bits[1] |= more[1];
        }
        Ok((bits, false))
    }

    /// One list item: `*`, `V`, `A-B`, each with an optional `/STEP`.
    fn item(&self, item: &str, at: Range<usize>) -> Result<Bits, CronError> {
        if item.is_empty() {
            return Err(self.error(at, "empty list item"));
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step_text)) => {
                let step_at = at.start + base.len() + 1..at.end;
                let step = match step_text.parse::<u32>() {
                    Ok(step) if step >= 1 => step,
                    Ok(_) => return Err(self.error(step_at, "step `0` must be at least 1")),
                    Err(_) => {
                        return Err(self.error(
                            step_at,
                            format_args!("step `{step_text}` is not a positive number"),
                        ))
                    }
                };
                (base, Some(step))
            }
            None => (item, None),
        };
        let base_at = at.start..at.start + base.len();
        if base.is_empty() {
            return Err(self.error(base_at, "a step needs `*`, a value or a range before `/`"));
        }
        let (first, last) = if base == "*" {
            (self.kind.min, self.kind.max)
        } else if let Some((a, b)) = base.split_once('-') {
            let a_at = base_at.start..base_at.start + a.len();
            let b_at = a_at.end + 1..base_at.end;
            let first = self.value(a, a_at)?;
            let last = self.value(b, b_at)?;
            if first > last {
                return Err(self.error(
                    base_at,
                    format_args!("range `{base}` ends before it starts"),
                ));
            }
            (first, last)
        } else {
            let value = self.value(base, base_at)?;
            // `V/STEP` runs from V to the end of the field, as in Quartz.
            (value, if step.is_some() { self.kind.max } else { value })
        };
        Ok(self.range_bits(first, last, step.unwrap_or(1)))
    }

    /// A number or a name, within the field's range.
    fn value(&self, text: &str, at: Range<usize>) -> Result<u32, CronError> {
        if text.is_empty() {
            return Err(self.error(at, "missing value"));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let range = || {
                let sunday = if self.kind.slot == Slot::Week {
                    " (0 = Sunday)"
                } else {
                    ""
                };
                format!(
                    "`{text}` is out of range {}-{}{sunday}",
                    self.kind.min, self.kind.max
                )
            };
            return match text.parse::<u32>() {
                Ok(v) if (self.kind.min..=self.kind.max).contains(&v) => Ok(v),
                _ => Err(self.error(at, range())),
            };
        }
        if let Some(i) = self
            .kind
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))
        {
            // Months are named from 1, week days from 0: `min` is the first name's value.
            return Ok(self.kind.min + i as u32);
        }
        let expected = match self.kind.names.first() {
            Some(first) => format!(
                "a number {}-{} or a name {first}-{}",
                self.kind.min,
                self.kind.max,
                self.kind.names.last().unwrap_or(first)
            ),
            None => format!("a number {}-{}", self.kind.min, self.kind.max),
        };
        Err(self.error(at, format_args!("`{text}` is not {expected}")))
    }

    fn range_bits(&self, first: u32, last: u32, step: u32) -> Bits {
        let mut bits: Bits = [0; 2];
        let mut v = first;
        while v <= last {
            let n = v - self.kind.min;
            if let Some(word) = bits.get_mut((n / 128) as usize) {
                *word |= 1u128 << (n % 128);
            }
            v = match v.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
        bits
    }
}

impl Schedule {
    /// Parses a 7-field or 5-field expression.
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        let mut fields: Vec<(usize, &str)> = Vec::with_capacity(7);
        let mut rest = expr;
        while let Some(start) = rest.find(|c: char| !c.is_ascii_whitespace()) {
            let tail = &rest[start..];
            let len = tail
                .find(|c: char| c.is_ascii_whitespace())
                .unwrap_or(tail.len());
            let offset = expr.len() - rest.len() + start;
            fields.push((offset, &tail[..len]));
            rest = &tail[len..];
        }
        let kinds: &[Kind] = match fields.len() {
            7 => &[SECOND, MINUTE, HOUR, DAY, MONTH, WEEK, YEAR],
            5 => &[MINUTE, HOUR, DAY, MONTH, WEEK],
            n => {
                return Err(CronError {
                    field: None,
                    span: 0..expr.len(),
                    message: format!(
                        "expected 7 fields (sec min hour day month week year) or 5 \
                         (min hour day month week), found {n}"
                    ),
                })
            }
        };
        let mut schedule = Schedule {
            // The 5-field form fires at second 0 of any year.
            seconds: 1,
            minutes: 0,
            hours: 0,
            days: 0,
            months: 0,
            weekdays: 0,
            years: YEAR_ANY,
            any_day: false,
            any_weekday: false,
        };
        for (i, (kind, (offset, text))) in kinds.iter().zip(fields).enumerate() {
            let field = Field {
                kind: *kind,
                index: i + 1,
                text,
                offset,
            };
            let (bits, any) = field.parse()?;
            // The bit sets fit their fields by construction (value - min <= max - min).
            let low = bits[0];
            match kind.slot {
                Slot::Second => schedule.seconds = low as u64,
                Slot::Minute => schedule.minutes = low as u64,
                Slot::Hour => schedule.hours = low as u32,
                Slot::Day => {
                    schedule.days = (low as u32) << 1;
                    schedule.any_day = any;
                }
                Slot::Month => schedule.months = (low as u16) << 1,
                Slot::Week => {
                    schedule.weekdays = low as u8;
                    schedule.any_weekday = any;
                }
                Slot::Year => schedule.years = bits,
            }
        }
        Ok(schedule)
    }

    /// The first tick strictly after `t`, or `None` when there is none (the years named
    /// are past, or the days named never happen, such as 31 February).
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).ok()?,
            // Before 1970: the first candidate is the epoch itself.
            Err(_) => -1,
        };
        let next = self.next_from(secs.checked_add(1)?)?;
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(next).ok()?))
    }

    /// The first tick at or after `from` (Unix seconds, UTC).
    fn next_from(&self, from: i64) -> Option<i64> {
        let mut day = from.div_euclid(SECONDS_PER_DAY);
        // The time of day to start from: `from`'s on its own day, midnight after that.
        let mut time = from.rem_euclid(SECONDS_PER_DAY);
        loop {
            let (year, month, dom) = civil_from_days(day);
            if year > i64::from(LAST_YEAR) {
                return None;
            }
            if year < i64::from(FIRST_YEAR) {
                day = days_from_civil(i64::from(FIRST_YEAR), 1, 1);
                time = 0;
                continue;
            }
            let year_bit = (year - i64::from(FIRST_YEAR)) as u32;
            if !has(&self.years, year_bit) {
                // On to 1 January of the next year named.
                let later = (year_bit + 1..=LAST_YEAR - FIRST_YEAR).find(|n| has(&self.years, *n));
                day = days_from_civil(i64::from(FIRST_YEAR + later?), 1, 1);
                time = 0;
                continue;
            }
            if self.months & (1 << month) == 0 {
                day = match month {
                    12 => days_from_civil(year + 1, 1, 1),
                    _ => days_from_civil(year, month + 1, 1),
                };
                time = 0;
                continue;
            }
            if self.day_matches(day, dom) {
                if let Some(t) = self.time_from(time) {
                    return Some(day * SECONDS_PER_DAY + t);
                }
            }
            day += 1;
            time = 0;
        }
    }

    /// Day of month and day of week, combined as the module doc says.
    fn day_matches(&self, day: i64, dom: u32) -> bool {
        let by_day = self.days & (1 << dom) != 0;
        // 1 January 1970 was a Thursday (4).
        let weekday = (day + 4).rem_euclid(7) as u32;
        let by_week = self.weekdays & (1 << weekday) != 0;
        if self.any_day || self.any_weekday {
            by_day && by_week
        } else {
            by_day || by_week
        }
    }

    /// The first second of a day at or after `from` (seconds since midnight) that the
    /// hour, minute and second fields allow.
    fn time_from(&self, from: i64) -> Option<i64> {
        let (h0, m0, s0) = (from / 3600, from / 60 % 60, from % 60);
        for h in h0..24 {
            if self.hours & (1 << h) == 0 {
                continue;
            }
            let m_start = if h == h0 { m0 } else { 0 };
            for m in m_start..60 {
                if self.minutes & (1 << m) == 0 {
                    continue;
                }
                let s_start = if h == h0 && m == m0 { s0 } else { 0 };
                let allowed = self.seconds >> s_start;
                if allowed != 0 {
                    let s = s_start + i64::from(allowed.trailing_zeros());
                    return Some(h * 3600 + m * 60 + s);
                }
            }
        }
        None
    }
}

/// Year, month (1-12) and day (1-31) of a day counted from 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to a date (the inverse of [`civil_from_days`]); `day` may run
/// past the month's end.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `t` as RFC 3339 UTC to the second, e.g. `2026-12-08T03:00:00Z` (times before 1970
/// print as the epoch).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
