//! `[[routes]]`: host and path prefix to a `type = "http"` function, normalized so the
//! router can match them exactly, and the check that no two routes are the same.

use std::collections::HashMap;

use super::functions::{check_name, Ident};
use super::walk::{Ctx, Section, Str};
use super::{FunctionKind, RouteConfig};

const ROUTE_KEYS: &[&str] = &["host", "path_prefix", "function", "strip_prefix"];

/// Reads one `[[routes]]` entry; `None` when it cannot be used (reported).
pub(super) fn read_route(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    functions: &[Ident],
    seen: &mut HashMap<(Option<String>, String), usize>,
    index: usize,
) -> Option<RouteConfig> {
    ctx.check_keys(s, ROUTE_KEYS);

    let host = match ctx.get_str(s, "host", "a string") {
        Some(h) => match parse_host(&h.value) {
            Ok(host) => Some(host),
            Err(why) => {
                let path = s.key_path("host");
                ctx.error(h.span, format!("{path}: invalid host {:?}: {why}", h.value));
                None
            }
        },
        None if s.get("host").is_none() => Some(None),
        None => None,
    };

    let prefix = match ctx.get_str(s, "path_prefix", "a string") {
        Some(p) => match normalize_prefix(&p.value) {
            Ok(prefix) => Some((prefix, p.span)),
            Err(why) => {
                let path = s.key_path("path_prefix");
                ctx.error(
                    p.span,
                    format!("{path}: invalid path_prefix {:?}: {why}", p.value),
                );
                None
            }
        },
        None => {
            if s.get("path_prefix").is_none() {
                let path = s.key_path("path_prefix");
                ctx.error_at_path(path, s.start, "missing required key `path_prefix`");
            }
            None
        }
    };

    let function = match ctx.get_str(s, "function", "a string (\"name\" or \"namespace/name\")") {
        Some(f) => resolve_route_target(ctx, s, &f, functions),
        None => {
            if s.get("function").is_none() {
                let path = s.key_path("function");
                ctx.error_at_path(path, s.start, "missing required key `function`");
            }
            None
        }
    };
    let strip_prefix = ctx.get_bool(s, "strip_prefix", false);

    let (host, (path_prefix, prefix_span)) = (host?, prefix?);
    let key = (host.clone(), path_prefix.clone());
    if let Some(first) = seen.get(&key) {
        let message = format!(
            "duplicate route: host {:?} and path_prefix {path_prefix:?} are already used by \
             routes[{first}]",
            host.as_deref().unwrap_or("*")
        );
        ctx.error(prefix_span, message);
    } else {
        seen.insert(key, index);
    }
    Some(RouteConfig {
        host,
        path_prefix,
        function: function?,
        strip_prefix,
    })
}

/// Finds the index of the `http` function a route names.
fn resolve_route_target(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    target: &Str,
    functions: &[Ident],
) -> Option<usize> {
    let path = s.key_path("function");
    let (namespace, name) = match target.value.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("default", target.value.as_str()),
    };
    if check_name(namespace).is_err() || check_name(name).is_err() {
        let message = format!(
            "{path}: invalid function reference {:?}: expected \"name\" or \"namespace/name\"",
            target.value
        );
        ctx.error(target.span.clone(), message);
        return None;
    }
    let Some(function) = functions
        .iter()
        .find(|f| f.namespace == namespace && f.name == name)
    else {
        let message = format!(
            "{path}: route to unknown function {name:?} in namespace {namespace:?} \
             (no [[functions]] entry has that name)"
        );
        ctx.error(target.span.clone(), message);
        return None;
    };
    if function.kind == Some(FunctionKind::Event) {
        let message = format!(
            "{path}: routes can only target functions of type \"http\"; \
             \"{namespace}/{name}\" is of type \"event\""
        );
        ctx.error(target.span.clone(), message);
        return None;
    }
    Some(function.index)
}

/// A route's `host`: `*` is any host; else the exact host, lower-cased, port removed.
fn parse_host(host: &str) -> Result<Option<String>, String> {
    if host == "*" {
        return Ok(None);
    }
    let lower = host.to_ascii_lowercase();
    let without_port = if let Some(rest) = lower.strip_prefix('[') {
        // `[::1]:8080`: keep the brackets, drop what follows `]`.
        let Some((address, after)) = rest.split_once(']') else {
            return Err("unclosed `[`".to_string());
        };
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if address.is_empty() || !port_ok {
            return Err("expected a host name, optionally with a port".to_string());
        }
        format!("[{address}]")
    } else {
        match lower.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
            Some(_) => return Err("expected a host name, optionally with a port".to_string()),
            None => lower,
        }
    };
    if without_port.is_empty() {
        return Err("must not be empty (use \"*\" for any host)".to_string());
    }
    if without_port.contains('*') {
        return Err("wildcards other than \"*\" alone are not supported".to_string());
    }
    if without_port
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err("expected a host name, optionally with a port".to_string());
    }
    Ok(Some(without_port))
}

/// A route's `path_prefix`: starts with `/`; a trailing `/` is dropped unless it is `/`.
fn normalize_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err("must start with \"/\"".to_string());
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err("must be a path without whitespace, `?` or `#`".to_string());
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

#[cfg(test)]
mod tests;
