//! What the actions share in reading a call: its JSON fields, the function it names, and
//! the platform's time format.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::asynchronous::FunctionKey;
use crate::config::{FunctionConfig, FunctionKind};
use crate::error::reflected;
use crate::function::Function;
use crate::invoke::Gateway;

pub const DEFAULT_NAMESPACE: &str = "default";
const LATEST: &str = "$LATEST";
/// `InvokeFunction`'s default qualifier: the version the default alias points at, which
/// for the gateway is the one version it serves.
const DEFAULT_ALIAS: &str = "$DEFAULT";

/// The call's fields; an empty body is an empty object. Unknown fields are ignored, as
/// newer SDKs may send fields this gateway does not know.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    Ok(serde_json::from_slice(body)?)
}

/// A required string field.
pub fn required(value: Option<String>, name: &'static str) -> Result<String, ApiError> {
    match value {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(ApiError::MissingParameter(name)),
    }
}

/// The configured function `namespace/name` of qualifier `qualifier` (`$LATEST`,
/// `$DEFAULT` or its configured version), with its config.
pub fn function<'g>(
    gateway: &'g Gateway,
    name: &str,
    namespace: Option<&str>,
    qualifier: Option<&str>,
) -> Result<(&'g Arc<Function>, &'g FunctionConfig), ApiError> {
    let namespace = namespace
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    let not_found = || ApiError::FunctionNotFound {
        name: reflected(name),
        namespace: reflected(namespace),
    };
    let key = FunctionKey::new(namespace, name);
    let function = gateway.function(&key).ok_or_else(not_found)?;
    let config = gateway
        .config()
        .functions
        .iter()
        .find(|f| f.name == name && f.namespace == namespace)
        .ok_or_else(not_found)?;
    match qualifier {
        None | Some("" | LATEST | DEFAULT_ALIAS) => {}
        Some(q) if q == config.version => {}
        Some(q) => {
            return Err(ApiError::FunctionNotFound {
                name: format!("{}:{}", reflected(name), reflected(q)),
                namespace: reflected(namespace),
            })
        }
    }
    Ok((function, config))
}

/// `"Event"` or `"HTTP"`, as the platform names a function's type.
pub fn kind_name(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Event => "Event",
        FunctionKind::Http => "HTTP",
    }
}

/// `YYYY-MM-DD HH:MM:SS`, UTC.
pub fn format_time(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    // `2026-01-02T03:04:05Z` -> `2026-01-02 03:04:05`
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Parses `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn parse_time(text: &str, field: &str) -> Result<SystemTime, ApiError> {
    let bad = || {
        ApiError::InvalidParameterValue(format!(
            "{field} must be a time as YYYY-MM-DD HH:MM:SS, not [{}]",
            reflected(text)
        ))
    };
    if text.len() != 19 || text.as_bytes().get(10) != Some(&b' ') {
        return Err(bad());
    }
    let iso = format!("{}T{}Z", &text[..10], &text[11..]);
    humantime::parse_rfc3339(&iso).map_err(|_| bad())
}

/// A timeout as the platform's whole seconds, rounded up (a `"500ms"` timeout is 1).
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_write_as_the_platform_spells_them() {
        let t = parse_time("2026-01-02 03:04:05", "Start").unwrap();
        assert_eq!(format_time(t), "2026-01-02 03:04:05");
        let e = parse_time("2026-01-02T03:04:05", "Start").unwrap_err();
        assert_eq!(e.code(), "InvalidParameterValue");
        assert!(parse_time("2026-13-02 03:04:05", "Start").is_err());
    }

    #[test]
    fn fields_of_the_wrong_type_are_invalid_parameters() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "PascalCase")]
        struct P {
            #[allow(dead_code)]
            limit: Option<u32>,
        }
        assert_eq!(
            parse::<P>(br#"{"Limit": "x"}"#).unwrap_err().code(),
            "InvalidParameter"
        );
        assert_eq!(
            parse::<P>(b"not json").unwrap_err().code(),
            "InvalidParameter"
        );
        assert!(parse::<P>(b"").is_ok());
        assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }
}
