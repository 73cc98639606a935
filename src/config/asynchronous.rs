//! `[async]`: where `Event` invocations and timer ticks wait (an embedded SQLite store
//! in a folder, or Redis shared by replicas), how failed attempts are retried, how long
//! finished events stay queryable and how large an event may be.

use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

use super::launch::normalize_path;
use super::values::parse_duration;
use super::walk::{Ctx, Section};
use super::{AsyncConfig, AsyncStore, Secret};

const ASYNC_KEYS: &[&str] = &[
    "store",
    "path",
    "url",
    "retries",
    "retry_delays",
    "retention",
    "max_event_bytes",
];

/// The largest `max_event_bytes`: the synchronous body limit of the platform (6 MiB).
const MAX_EVENT_BYTES: u64 = 6 * 1024 * 1024;

/// Reads `[async]`; `present` is false when the file has none (then `s` is empty and
/// every key takes its default).
pub(super) fn read_async(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    present: bool,
    config_dir: &Path,
) -> AsyncConfig {
    ctx.check_keys(s, ASYNC_KEYS);
    let defaults = AsyncConfig::default();
    let store = read_store(ctx, s, config_dir);
    let retries = ctx.get_u32(s, "retries", 0..=10, defaults.retries);
    let retry_delays = read_retry_delays(ctx, s, retries, defaults.retry_delays);
    AsyncConfig {
        configured: present,
        store,
        retries,
        retry_delays,
        retention: ctx.get_duration(s, "retention", defaults.retention, true),
        max_event_bytes: ctx.get_u64(
            s,
            "max_event_bytes",
            1..=MAX_EVENT_BYTES,
            defaults.max_event_bytes,
        ),
    }
}

/// `store`, with `path` (embedded) or `url` (redis); each key of the other store is an
/// error, so that a file never looks as if it set something it does not.
fn read_store(ctx: &mut Ctx<'_>, s: &Section<'_, '_>, config_dir: &Path) -> AsyncStore {
    let redis = match ctx.get_str(s, "store", "a string (\"embedded\" or \"redis\")") {
        Some(store) => match store.value.as_str() {
            "embedded" => false,
            "redis" => true,
            other => {
                let message = format!(
                    "async.store: unknown store {other:?}: expected \"embedded\" or \"redis\""
                );
                ctx.error(store.span, message);
                // The keys given say which store was meant; check them against it.
                s.get("url").is_some() && s.get("path").is_none()
            }
        },
        None => false,
    };
    if redis {
        if let Some((key, _)) = s.get("path") {
            let message = "async.path: does not apply to store = \"redis\" (its events are in \
                           Redis, at `url`)";
            ctx.error(key.span(), message);
        }
        let url = read_url(ctx, s);
        if url.is_none() && s.get("url").is_none() {
            ctx.error_at_path(
                s.key_path("url"),
                s.start,
                "missing required key `url` for store = \"redis\"",
            );
        }
        return AsyncStore::Redis {
            url: url.unwrap_or_else(|| Secret::new(String::new())),
        };
    }
    if let Some((key, _)) = s.get("url") {
        let message = "async.url: does not apply to store = \"embedded\" (set store = \"redis\" \
                       to use Redis)";
        ctx.error(key.span(), message);
    }
    let base = std::path::absolute(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    let path = match ctx.get_str(s, "path", "a string") {
        Some(path) if path.value.is_empty() => {
            ctx.error(path.span, "async.path: must not be empty");
            base.join("data/async")
        }
        Some(path) => base.join(path.value),
        None => base.join("data/async"),
    };
    AsyncStore::Embedded {
        path: normalize_path(&path),
    }
}

/// `url`: a `redis://` URL with a host (`rediss://`, Redis over TLS, is refused: the
/// gateway's Redis client is built without TLS). It may carry a password, so no
/// message shows it.
fn read_url(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Option<Secret> {
    let url = ctx.get_str(s, "url", "a string")?;
    let rest = ["redis://", "rediss://"].iter().find_map(|scheme| {
        url.value
            .get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| &url.value[scheme.len()..])
    });
    let tls = url
        .value
        .get(..9)
        .is_some_and(|head| head.eq_ignore_ascii_case("rediss://"));
    let problem = match rest {
        _ if tls => Some("rediss:// (Redis over TLS) is not supported yet: use redis://"),
        None => Some("expected a redis:// URL"),
        Some(rest) => {
            // `[user:password@]host[:port][/db]`: a host must be there.
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority.rsplit('@').next().unwrap_or_default();
            if host.is_empty() || host.starts_with(':') {
                Some("has no host: expected redis://HOST[:PORT][/DB]")
            } else if url
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                Some("must not contain whitespace or control characters")
            } else {
                None
            }
        }
    };
    match problem {
        Some(why) => {
            ctx.error(
                url.span,
                format!("async.url: {why} (the value is not shown)"),
            );
            None
        }
        None => Some(Secret::new(url.value)),
    }
}

/// `retry_delays`: durations; at least one when there are retries.
fn read_retry_delays(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    retries: u32,
    default: Vec<Duration>,
) -> Vec<Duration> {
    let Some((_, value)) = s.get("retry_delays") else {
        return default;
    };
    let path = s.key_path("retry_delays");
    let DeValue::Array(items) = value.get_ref() else {
        ctx.type_error(
            &path,
            value,
            "an array of durations such as [\"1m\", \"2m\"]",
        );
        return default;
    };
    let mut delays = Vec::with_capacity(items.len());
    let mut bad = false;
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(text) = ctx.string_value(&item_path, item, "a duration string such as \"1m\"")
        else {
            bad = true;
            continue;
        };
        match parse_duration(&text.value) {
            Ok(d) => delays.push(d),
            Err(why) => {
                ctx.error(text.span, format!("{item_path}: {why}"));
                bad = true;
            }
        }
    }
    if items.is_empty() && retries > 0 {
        let message = format!(
            "{path}: must list at least one delay when retries = {retries} (set retries = 0 \
             for no retry)"
        );
        ctx.error(value.span(), message);
    }
    if bad || (delays.is_empty() && retries > 0) {
        return default;
    }
    delays
}

#[cfg(test)]
mod tests;
