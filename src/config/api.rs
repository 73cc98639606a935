//! `[api]` and `[[api.keys]]`: the key pairs that may call the Tencent Cloud API 3.0
//! endpoint. A secret key signs calls, so it is a [`Secret`](super::Secret): no
//! message, `check` line or `Debug` output shows one; the ids may be shown.

use std::collections::HashMap;
use std::ops::Range;

use super::walk::{Ctx, Section};
use super::{ApiConfig, ApiKey};

const API_KEYS: &[&str] = &["keys"];
const KEY_KEYS: &[&str] = &["secret_id", "secret_key"];

pub(super) fn read_api(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> ApiConfig {
    ctx.check_keys(s, API_KEYS);
    let mut keys: Vec<ApiKey> = Vec::new();
    // secret_id -> the index of the entry that defined it first.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, entry) in ctx.tables(s, "keys", "[[api.keys]]").iter().enumerate() {
        ctx.check_keys(entry, KEY_KEYS);
        let id = read_id(ctx, entry);
        let secret_key = ctx.get_required_secret(entry, "secret_key");
        let Some((secret_id, span)) = id else {
            continue;
        };
        if let Some(first) = seen.get(&secret_id) {
            let message = format!(
                "{}: duplicate secret_id {secret_id:?}: already defined by api.keys[{first}]",
                entry.key_path("secret_id")
            );
            ctx.error(span, message);
            continue;
        }
        seen.insert(secret_id.clone(), index);
        if let Some(secret_key) = secret_key {
            keys.push(ApiKey {
                secret_id,
                secret_key,
            });
        }
    }
    ApiConfig { keys }
}

/// The SecretId, with its span: a token (it travels in the `Authorization` header).
fn read_id(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Option<(String, Range<usize>)> {
    let Some(id) = ctx.get_str(s, "secret_id", "a string") else {
        if s.get("secret_id").is_none() {
            let message = "missing required key `secret_id`";
            ctx.error_at_path(s.key_path("secret_id"), s.start, message);
        }
        return None;
    };
    let bad = if id.value.is_empty() {
        Some("must not be empty")
    } else if !id.value.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        Some("use only printable ASCII characters other than `/`")
    } else {
        None
    };
    if let Some(why) = bad {
        let message = format!("{}: invalid value: {why}", s.key_path("secret_id"));
        ctx.error(id.span, message);
        return None;
    }
    Some((id.value, id.span))
}

#[cfg(test)]
mod tests;
