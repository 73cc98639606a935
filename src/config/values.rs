//! Typed values: strings (with `${VAR}` resolved), tokens stamped into headers,
//! booleans, integers within a range, durations, socket addresses and secrets. Each
//! getter reports a problem in the contract's words and falls back to the default, so
//! the walk goes on.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::env::expand_env;
use super::walk::{Ctx, Section, Str};
use super::Secret;

const DURATION_FORM: &str = "a number with a unit (ms, s, m, h), e.g. \"3s\" or \"250ms\"";
const DURATION_TYPE: &str = "a duration string such as \"3s\"";

impl Ctx<'_> {
    /// A string value with `${VAR}` resolved; `None` if absent or unusable (reported).
    pub(super) fn get_str(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        expected: &str,
    ) -> Option<Str> {
        let (_, value) = section.get(key)?;
        self.string_value(&section.key_path(key), value, expected)
    }

    pub(super) fn string_value(
        &mut self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
        expected: &str,
    ) -> Option<Str> {
        let DeValue::String(raw) = value.get_ref() else {
            self.type_error(path, value, expected);
            return None;
        };
        match expand_env(raw, self.env) {
            Ok(value_text) => Some(Str {
                value: value_text,
                span: value.span(),
            }),
            Err(problems) => {
                for problem in problems {
                    self.error(value.span(), format!("{path}: {problem}"));
                }
                None
            }
        }
    }

    /// A string that must be a non-empty token without whitespace or control characters
    /// (it travels in headers).
    pub(super) fn get_token(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: &str,
    ) -> String {
        let Some(s) = self.get_str(section, key, "a string") else {
            return default.to_string();
        };
        match check_token(&s.value) {
            Ok(()) => s.value,
            Err(why) => {
                let path = section.key_path(key);
                self.error(
                    s.span,
                    format!("{path}: invalid value {:?}: {why}", s.value),
                );
                default.to_string()
            }
        }
    }

    pub(super) fn get_bool(&mut self, section: &Section<'_, '_>, key: &str, default: bool) -> bool {
        let Some((_, value)) = section.get(key) else {
            return default;
        };
        match value.get_ref() {
            DeValue::Boolean(b) => *b,
            _ => {
                self.type_error(&section.key_path(key), value, "a boolean (true or false)");
                default
            }
        }
    }

    /// An integer within `range`.
    pub(super) fn get_u64(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        self.get_u64_opt(section, key, range).unwrap_or(default)
    }

    /// An integer within `range`; `None` if absent or unusable (reported).
    pub(super) fn get_u64_opt(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u64>,
    ) -> Option<u64> {
        let (_, value) = section.get(key)?;
        let path = section.key_path(key);
        let DeValue::Integer(int) = value.get_ref() else {
            self.type_error(&path, value, "an integer");
            return None;
        };
        let parsed = i128::from_str_radix(int.as_str(), int.radix())
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| range.contains(n));
        if parsed.is_none() {
            let bounds = if *range.end() == u64::MAX {
                format!("at least {}", range.start())
            } else {
                format!("between {} and {}", range.start(), range.end())
            };
            self.error(
                value.span(),
                format!("{path}: must be {bounds}, found {int}"),
            );
        }
        parsed
    }

    pub(super) fn get_u32(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        self.get_u32_opt(section, key, range).unwrap_or(default)
    }

    /// An integer within `range`; `None` if absent or unusable (reported).
    pub(super) fn get_u32_opt(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u32>,
    ) -> Option<u32> {
        let wide = u64::from(*range.start())..=u64::from(*range.end());
        let n = self.get_u64_opt(section, key, wide)?;
        u32::try_from(n).ok()
    }

    /// A duration string; `positive` refuses zero.
    pub(super) fn get_duration(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(s) = self.get_str(section, key, DURATION_TYPE) else {
            return default;
        };
        let path = section.key_path(key);
        match parse_duration(&s.value) {
            Ok(d) if positive && d.is_zero() => {
                let message = format!("{path}: must be greater than zero, found {:?}", s.value);
                self.error(s.span, message);
                default
            }
            Ok(d) => d,
            Err(why) => {
                self.error(s.span, format!("{path}: {why}"));
                default
            }
        }
    }

    pub(super) fn get_addr(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: SocketAddr,
    ) -> SocketAddr {
        let expected = "an address string such as \"127.0.0.1:8080\"";
        let Some(s) = self.get_str(section, key, expected) else {
            return default;
        };
        match s.value.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let path = section.key_path(key);
                let message = format!(
                    "{path}: invalid address {:?}: expected an IP address and a port, \
                     e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    s.value
                );
                self.error(s.span, message);
                default
            }
        }
    }

    /// An optional secret: type and `${VAR}` problems are reported without the value.
    pub(super) fn get_secret(&mut self, section: &Section<'_, '_>, key: &str) -> Option<Secret> {
        let s = self.get_str(section, key, "a string")?;
        if s.value.chars().any(char::is_control) {
            let path = section.key_path(key);
            let message = format!(
                "{path}: contains a control character, which cannot be sent in a header \
                 (the value is not shown)"
            );
            self.error(s.span, message);
            return None;
        }
        // `secret_id = "${SCF_SECRET_ID}"` with the variable set to "" means "not
        // configured": an empty credential header would help nobody.
        (!s.value.is_empty()).then(|| Secret::new(s.value))
    }

    /// A secret that must be there and not empty (a `${VAR}` set to "" included):
    /// every problem is reported, without the value.
    pub(super) fn get_required_secret(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
    ) -> Option<Secret> {
        let Some((_, value)) = section.get(key) else {
            let message = format!("missing required key `{key}`");
            self.error_at_path(section.key_path(key), section.start, message);
            return None;
        };
        let span = value.span();
        let s = self.get_str(section, key, "a string")?;
        let path = section.key_path(key);
        if s.value.is_empty() {
            self.error(span, format!("{path}: must not be empty"));
            return None;
        }
        if s.value.chars().any(char::is_control) {
            let message = format!("{path}: contains a control character (the value is not shown)");
            self.error(span, message);
            return None;
        }
        Some(Secret::new(s.value))
    }
}

/// Parses `"250ms"`, `"3s"`, `"0.5s"`, `"5m"`, `"1h"`.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: expected {DURATION_FORM}");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits_only(fraction) || (number.contains('.') && fraction.is_empty()) {
        return Err(invalid());
    }
    // Whole nanoseconds: more than 9 fractional digits cannot matter.
    let fraction = &fraction[..fraction.len().min(9)];
    let too_long = || format!("invalid duration {text:?}: too long");
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(too_long)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(9));
        let numerator: u128 = fraction.parse().map_err(|_| invalid())?;
        nanos = nanos
            .checked_add(numerator * nanos_per_unit / scale)
            .ok_or_else(too_long)?;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// Values stamped into headers: non-empty, no whitespace or control characters.
pub(super) fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
