//! `[server]`: listeners, limits (bodies, client timers, connections), workers, shutdown,
//! the access log and the admin token; `[server.tls]` is read by `tls`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::walk::{Ctx, Section};
use super::{Secret, ServerConfig};

const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "max_body_bytes",
    "workers",
    "shutdown_grace",
    "access_log",
    "upstream_idle_timeout",
    "header_read_timeout",
    "client_idle_timeout",
    "max_connections",
    "tls",
    "admin_token",
];

/// The most `max_connections` may be: what one process can hold open with room for its
/// instances (the open-file limit is raised to twice this at start).
pub(crate) const MAX_CONNECTIONS_LIMIT: u64 = 1 << 20;

pub(super) fn read_server(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    config_dir: &Path,
) -> ServerConfig {
    ctx.check_keys(s, SERVER_KEYS);
    let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listen = ctx.get_addr(s, "listen", SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin_listen = ctx.get_addr(s, "admin_listen", SocketAddr::from(([127, 0, 0, 1], 9090)));
    if listen == admin_listen && listen.port() != 0 {
        if let Some((_, value)) = s.get("admin_listen").or_else(|| s.get("listen")) {
            ctx.error(
                value.span(),
                format!("server.admin_listen: must differ from server.listen ({listen})"),
            );
        }
    }
    let cpus = u64::try_from(default_workers).unwrap_or(1);
    let workers = ctx.get_u64(s, "workers", 1..=1024, cpus);
    ServerConfig {
        listen,
        admin_listen,
        max_body_bytes: ctx.get_u64(s, "max_body_bytes", 1..=u64::MAX, 6 * 1024 * 1024),
        workers: usize::try_from(workers).unwrap_or(default_workers),
        shutdown_grace: ctx.get_duration(s, "shutdown_grace", Duration::from_secs(30), false),
        access_log: ctx.get_bool(s, "access_log", false),
        upstream_idle_timeout: ctx.get_duration(
            s,
            "upstream_idle_timeout",
            Duration::from_secs(4),
            true,
        ),
        header_read_timeout: ctx.get_duration(
            s,
            "header_read_timeout",
            Duration::from_secs(10),
            true,
        ),
        client_idle_timeout: ctx.get_duration(
            s,
            "client_idle_timeout",
            Duration::from_secs(60),
            true,
        ),
        max_connections: ctx.get_u64(s, "max_connections", 1..=MAX_CONNECTIONS_LIMIT, 10_000),
        tls: super::tls::read_tls(ctx, s, config_dir),
        admin_token: read_admin_token(ctx, s),
    }
}

/// `admin_token`: a token that resolves to nothing (`"${ADMIN_TOKEN}"` with the variable
/// set to "") is refused rather than taken as "no token", which would leave
/// `POST /admin/*` open where a guard was asked for. The value is never shown.
fn read_admin_token(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Option<Secret> {
    let token = ctx.get_str(s, "admin_token", "a string")?;
    let problem = if token.value.is_empty() {
        "must not be empty (remove the key to leave POST /admin/* open)"
    } else if token.value.chars().any(|c| c.is_control() || c == ' ') {
        "contains a space or control character, which cannot be sent in a header \
         (the value is not shown)"
    } else {
        return Some(Secret::new(token.value));
    };
    ctx.error(
        token.span,
        format!("{}: {problem}", s.key_path("admin_token")),
    );
    None
}

#[cfg(test)]
mod tests;
