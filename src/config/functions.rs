//! `[[functions]]`: one entry's name, type, limits and instance source (a static
//! `instances` list, or `launch`), and the check that no two entries name the same
//! function.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::launch::{read_launch, PinnedPort};
use super::timers::read_timers;
use super::walk::{Ctx, Section, Str};
use super::{FunctionConfig, FunctionKind, ImagesConfig, InstanceSource, StaticInstance};

const FUNCTION_KEYS: &[&str] = &[
    "name",
    "namespace",
    "version",
    "type",
    "memory_mb",
    "timeout",
    "instance_concurrency",
    "queue_depth",
    "queue_timeout",
    "instances",
    "launch",
    "timers",
];

/// What routes and the duplicate check need to know about a function.
pub(super) struct Ident {
    pub(super) namespace: String,
    pub(super) name: String,
    /// `None` when `type` was invalid (already reported), so no route check piles on.
    pub(super) kind: Option<FunctionKind>,
    pub(super) name_span: Range<usize>,
    /// Its index in `[[functions]]` (and in [`Config::functions`](super::Config::functions)).
    pub(super) index: usize,
}

/// Reads one `[[functions]]` entry; the [`Ident`] is `None` when its name is unusable,
/// the [`PinnedPort`] is `Some` for a launched function with a valid `port`.
pub(super) fn read_function(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    index: usize,
    config_dir: &Path,
    images: &ImagesConfig,
) -> (FunctionConfig, Option<Ident>, Option<PinnedPort>) {
    ctx.check_keys(s, FUNCTION_KEYS);

    let name = match ctx.get_str(s, "name", "a string") {
        Some(name) => checked_name(ctx, s, "name", name),
        None => {
            if s.get("name").is_none() {
                ctx.error_at_path(s.key_path("name"), s.start, "missing required key `name`");
            }
            None
        }
    };
    let namespace = match ctx.get_str(s, "namespace", "a string") {
        Some(ns) => checked_name(ctx, s, "namespace", ns).map(|ns| ns.value),
        None if s.get("namespace").is_none() => Some("default".to_string()),
        None => None,
    };
    let version = ctx.get_token(s, "version", "$LATEST");
    let kind = read_kind(ctx, s);
    let (source, pinned) = read_source(ctx, s, config_dir, images);
    let timers = read_timers(ctx, s, kind);

    let function = FunctionConfig {
        name: name.as_ref().map(|n| n.value.clone()).unwrap_or_default(),
        namespace: namespace.clone().unwrap_or_default(),
        version,
        kind: kind.unwrap_or(FunctionKind::Event),
        memory_mb: ctx.get_u32(s, "memory_mb", 64..=65536, 128),
        timeout: ctx.get_duration(s, "timeout", Duration::from_secs(3), true),
        instance_concurrency: ctx.get_u32(s, "instance_concurrency", 1..=1000, 1),
        queue_depth: ctx.get_u32(s, "queue_depth", 0..=1_000_000, 100),
        queue_timeout: ctx.get_duration(s, "queue_timeout", Duration::from_secs(1), false),
        source,
        timers,
    };
    let ident = match (name, namespace) {
        (Some(name), Some(namespace)) => Some(Ident {
            namespace,
            name: name.value,
            kind,
            name_span: name.span,
            index,
        }),
        _ => None,
    };
    (function, ident, pinned)
}

/// Checks a function or namespace name (it appears in URL paths and headers).
fn checked_name(ctx: &mut Ctx<'_>, s: &Section<'_, '_>, key: &str, value: Str) -> Option<Str> {
    match check_name(&value.value) {
        Ok(()) => Some(value),
        Err(why) => {
            let path = s.key_path(key);
            ctx.error(
                value.span.clone(),
                format!("{path}: invalid {key} {:?}: {why}", value.value),
            );
            None
        }
    }
}

/// `type`; `None` if invalid (reported).
fn read_kind(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Option<FunctionKind> {
    if s.get("type").is_none() {
        return Some(FunctionKind::Event);
    }
    let t = ctx.get_str(s, "type", "a string (\"event\" or \"http\")")?;
    match t.value.as_str() {
        "event" => Some(FunctionKind::Event),
        "http" => Some(FunctionKind::Http),
        other => {
            let path = s.key_path("type");
            let message =
                format!("{path}: unknown function type {other:?}: expected \"event\" or \"http\"");
            ctx.error(t.span, message);
            None
        }
    }
}

/// `instances` or `launch` (exactly one of them).
fn read_source(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    config_dir: &Path,
    images: &ImagesConfig,
) -> (InstanceSource, Option<PinnedPort>) {
    // Read even next to `instances`, so that its own problems are reported as well.
    let launch = ctx
        .table(s, "launch", "[functions.launch]")
        .map(|l| read_launch(ctx, &l, config_dir, images));
    let Some((_, value)) = s.get("instances") else {
        return match launch {
            Some((launch, pinned)) => (InstanceSource::Launch(launch), pinned),
            None => {
                if s.get("launch").is_none() {
                    ctx.error_at_path(
                        s.path.clone(),
                        s.start,
                        "one of `instances` or `launch` is required",
                    );
                }
                (InstanceSource::Static(Vec::new()), None)
            }
        };
    };
    if let Some((key, _)) = s.get("launch") {
        ctx.error(key.span(), "set either `instances` or `launch`, not both");
    }
    (read_instances(ctx, s, value), None)
}

/// `instances = ["host:port", ...]`.
fn read_instances(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    value: &Spanned<DeValue<'_>>,
) -> InstanceSource {
    let path = s.key_path("instances");
    let expected = "an array of \"host:port\" strings";
    let DeValue::Array(items) = value.get_ref() else {
        ctx.type_error(&path, value, expected);
        return InstanceSource::Static(Vec::new());
    };
    if items.is_empty() {
        let message = format!("{path}: must list at least one \"host:port\" address");
        ctx.error(value.span(), message);
    }
    let mut instances = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(entry) = ctx.string_value(&item_path, item, "a \"host:port\" string") else {
            continue;
        };
        match read_instance(entry.value) {
            Ok(instance) => instances.push(instance),
            Err(why) => ctx.error(entry.span, format!("{item_path}: {why}")),
        }
    }
    InstanceSource::Static(instances)
}

pub(super) fn check_duplicate_function(ctx: &mut Ctx<'_>, earlier: &[Ident], ident: &Ident) {
    if let Some(first) = earlier
        .iter()
        .find(|e| e.namespace == ident.namespace && e.name == ident.name)
    {
        let message = format!(
            "duplicate function \"{}/{}\": already defined by functions[{}]",
            ident.namespace, ident.name, first.index
        );
        ctx.error(ident.name_span.clone(), message);
    }
}

/// Function and namespace names: non-empty, `[A-Za-z0-9_-]` only.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("use only letters, digits, `-` and `_`".to_string());
    }
    Ok(())
}

/// A static instance: `ip:port` is a fixed member; `name:port` stands for the name's
/// addresses, found at run time (so a name that does not resolve yet, such as a
/// Kubernetes Service with no pods, or a resolver that is down, is no error here).
fn read_instance(authority: String) -> Result<StaticInstance, String> {
    let no_port = |authority: &str| {
        format!(
            "instance {authority:?} has no port: expected \"host:port\", \
             e.g. \"127.0.0.1:9000\""
        )
    };
    let port_zero =
        |authority: &str| format!("instance {authority:?}: port 0 cannot be connected to");
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(port_zero(&authority));
        }
        return Ok(StaticInstance::Fixed { authority, addr });
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(no_port(&authority));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(no_port(&authority));
    };
    if host.is_empty() {
        return Err(no_port(&authority));
    }
    if port == 0 {
        return Err(port_zero(&authority));
    }
    if let Err(why) = check_host_name(host) {
        return Err(format!("instance {authority:?}: {why}"));
    }
    Ok(StaticInstance::Named {
        host: host.to_owned(),
        port,
        authority,
    })
}

/// A DNS name as resolvers take it: dot-separated labels of letters, digits, `-` and
/// `_` (1 to 63 bytes each, 253 in all), an optional final dot.
fn check_host_name(host: &str) -> Result<(), String> {
    if host.contains(':') || host.starts_with('[') {
        return Err("an IPv6 address goes in brackets: \"[::1]:9000\"".to_owned());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err("a host name has at most 253 characters".to_owned());
    }
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(valid_label) {
        return Err(format!(
            "invalid host name {host:?}: use labels of letters, digits, `-` and `_` \
             separated by dots"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
