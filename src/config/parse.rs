//! Turns the text of a config file into a [`Config`], or into the complete list of what
//! is wrong with it.
//!
//! Why a hand-written walker instead of `#[derive(Deserialize)]`: the contract wants
//! *every* problem reported at once, each with a `file:line:col`, and serde stops at
//! the first error. Walking the spanned tree ourselves also lets us resolve `${VAR}`
//! before a value is interpreted (so `timeout = "${T}"` works), refuse keys of features
//! that are not built yet with a message that says so, and make sure no message ever
//! carries the value of a secret.
//!
//! The walk never stops early: a bad value is reported and replaced by its default so
//! the rest of the file is still checked; [`Ctx::finish`] then returns either the
//! config or all the errors, sorted by where they are in the file.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::{Range, RangeInclusive};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    Config, ConfigError, ConfigErrors, Credentials, FunctionConfig, FunctionKind, InstanceSource,
    LaunchConfig, Location, PlatformConfig, RouteConfig, Secret, ServerConfig, StaticInstance,
};

/// The environment lookup `parse` resolves `${VAR}` through.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

const TOP_KEYS: &[&str] = &[
    "server",
    "platform",
    "credentials",
    "functions",
    "routes",
    "async",
];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "max_body_bytes",
    "workers",
    "shutdown_grace",
    "access_log",
    "upstream_idle_timeout",
];
const PLATFORM_KEYS: &[&str] = &["region", "appid", "uin"];
const CREDENTIAL_KEYS: &[&str] = &["secret_id", "secret_key", "session_token"];
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
const LAUNCH_KEYS: &[&str] = &[
    "command",
    "args",
    "env",
    "workdir",
    "port",
    "min_instances",
    "max_instances",
    "ready_timeout",
    "idle_timeout",
];
const ROUTE_KEYS: &[&str] = &["host", "path_prefix", "function", "strip_prefix"];

/// Upper bound of `min_instances` and `max_instances`: processes per function.
const MAX_INSTANCES: u32 = 1000;
/// `max_instances` when the gateway picks the ports, and when a port is pinned.
const DEFAULT_MAX_INSTANCES: u32 = 4;
const PINNED_MAX_INSTANCES: u32 = 1;

/// Lists of allowed keys longer than this are not spelled out in messages.
const LIST_KEYS_UP_TO: usize = 8;

const DURATION_FORM: &str = "a number with a unit (ms, s, m, h), e.g. \"3s\" or \"250ms\"";
const DURATION_TYPE: &str = "a duration string such as \"3s\"";

/// Parses and validates a config file's `text`. `path` is only used in messages and
/// stored in [`Config::path`]; `env` resolves `${VAR}` references.
pub fn parse(text: &str, path: &Path, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx::new(text, env);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for e in &syntax_errors {
            ctx.syntax_error(e);
        }
        return ctx.finish(path, None);
    }
    let config = read_config(&mut ctx, root.get_ref(), path);
    ctx.finish(path, Some(config))
}

// ---------------------------------------------------------------------------------------
// The walking context: line index, environment and the list of problems.
// ---------------------------------------------------------------------------------------

/// Carries what every step of the walk needs: the text (for positions), the
/// environment (for `${VAR}`) and the problems found so far.
struct Ctx<'a> {
    text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    env: Env<'a>,
    /// Each problem with the byte offset it sorts by.
    errors: Vec<(usize, ConfigError)>,
}

/// One table being read: `[server]`, one `[[functions]]` entry, the top level...
struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Where the table starts in the text; orders errors that have no position.
    start: usize,
    /// Key path prefix, e.g. `functions[0]`; empty for the top level.
    path: String,
    /// How messages name it, e.g. `[server]`; empty for the top level.
    name: &'static str,
}

type Entry<'t, 'i> = (
    &'t Spanned<std::borrow::Cow<'i, str>>,
    &'t Spanned<DeValue<'i>>,
);

impl<'t, 'i> Section<'t, 'i> {
    fn get(&self, key: &str) -> Option<Entry<'t, 'i>> {
        self.table.get_key_value(key)
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// ` in [server]`, or ` at the top level`.
    fn where_(&self) -> String {
        if self.name.is_empty() {
            " at the top level".to_string()
        } else {
            format!(" in {}", self.name)
        }
    }
}

/// A string value after `${VAR}` resolution, with the span of the TOML value.
struct Str {
    value: String,
    span: Range<usize>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, env: Env<'a>) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            text,
            line_starts,
            env,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> Location {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self
            .line_starts
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(0);
        let col = match self.text.get(line_start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset.saturating_sub(line_start),
        };
        Location::Position {
            line: line.max(1),
            col: col + 1,
        }
    }

    /// A problem at a span of the text.
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let location = self.position(span.start);
        self.errors.push((
            span.start,
            ConfigError {
                location,
                message: message.into(),
            },
        ));
    }

    /// A problem with no text of its own (a missing key), named by its key path and
    /// sorted at `order` (the start of the table it belongs to).
    fn error_at_path(&mut self, path: String, order: usize, message: impl Into<String>) {
        self.errors.push((
            order,
            ConfigError {
                location: Location::KeyPath(path),
                message: message.into(),
            },
        ));
    }

    fn syntax_error(&mut self, e: &toml::de::Error) {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => self.error(span, message),
            None => self.errors.push((
                usize::MAX,
                ConfigError {
                    location: Location::None,
                    message,
                },
            )),
        }
    }

    fn finish(mut self, path: &Path, config: Option<Config>) -> Result<Config, ConfigErrors> {
        match config {
            Some(config) if self.errors.is_empty() => Ok(config),
            _ => {
                self.errors.sort_by_key(|(order, _)| *order);
                let mut errors: Vec<ConfigError> =
                    self.errors.into_iter().map(|(_, e)| e).collect();
                errors.dedup();
                Err(ConfigErrors {
                    file: path.to_path_buf(),
                    errors,
                })
            }
        }
    }

    fn type_error(&mut self, path: &str, value: &Spanned<DeValue<'_>>, expected: &str) {
        let found = value.get_ref().type_str();
        self.error(
            value.span(),
            format!("{path}: expected {expected}, found {found}"),
        );
    }

    // ---- structure -------------------------------------------------------------------

    /// Reports every key of `section` not in `allowed`.
    fn check_keys(&mut self, section: &Section<'_, '_>, allowed: &[&str]) {
        for key in section.table.keys() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let mut message = format!("unknown key {name:?}{}", section.where_());
            if let Some(close) = closest(name, allowed) {
                message.push_str(&format!(" (did you mean `{close}`?)"));
            } else if allowed.len() <= LIST_KEYS_UP_TO {
                message.push_str(&format!("; allowed keys: {}", allowed.join(", ")));
            }
            self.error(key.span(), message);
        }
    }

    /// A sub-table; `None` (reported) if it has another type, `None` if it is absent.
    fn table<'t, 'i>(
        &mut self,
        parent: &Section<'t, 'i>,
        key: &str,
        name: &'static str,
    ) -> Option<Section<'t, 'i>> {
        let (_, value) = parent.get(key)?;
        let path = parent.key_path(key);
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                table,
                start: value.span().start,
                path,
                name,
            }),
            _ => {
                self.type_error(&path, value, "a table");
                None
            }
        }
    }

    /// The entries of an array of tables such as `[[functions]]`; empty if absent.
    fn tables<'t, 'i>(
        &mut self,
        parent: &Section<'t, 'i>,
        key: &str,
        name: &'static str,
    ) -> Vec<Section<'t, 'i>> {
        let Some((_, value)) = parent.get(key) else {
            return Vec::new();
        };
        let path = parent.key_path(key);
        let DeValue::Array(items) = value.get_ref() else {
            let expected = format!("an array of tables ({name})");
            self.type_error(&path, value, &expected);
            return Vec::new();
        };
        let mut sections = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match item.get_ref() {
                DeValue::Table(table) => sections.push(Section {
                    table,
                    start: item.span().start,
                    path: item_path,
                    name,
                }),
                _ => self.type_error(&item_path, item, "a table"),
            }
        }
        sections
    }

    // ---- typed getters -----------------------------------------------------------------

    /// A string value with `${VAR}` resolved; `None` if absent or unusable (reported).
    fn get_str(&mut self, section: &Section<'_, '_>, key: &str, expected: &str) -> Option<Str> {
        let (_, value) = section.get(key)?;
        self.string_value(&section.key_path(key), value, expected)
    }

    fn string_value(
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
    fn get_token(&mut self, section: &Section<'_, '_>, key: &str, default: &str) -> String {
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

    fn get_bool(&mut self, section: &Section<'_, '_>, key: &str, default: bool) -> bool {
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
    fn get_u64(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        self.get_u64_opt(section, key, range).unwrap_or(default)
    }

    /// An integer within `range`; `None` if absent or unusable (reported).
    fn get_u64_opt(
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

    fn get_u32(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        self.get_u32_opt(section, key, range).unwrap_or(default)
    }

    /// An integer within `range`; `None` if absent or unusable (reported).
    fn get_u32_opt(
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
    fn get_duration(
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

    fn get_addr(
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
    fn get_secret(&mut self, section: &Section<'_, '_>, key: &str) -> Option<Secret> {
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
}

// ---------------------------------------------------------------------------------------
// The sections.
// ---------------------------------------------------------------------------------------

fn read_config(ctx: &mut Ctx<'_>, root: &DeTable<'_>, path: &Path) -> Config {
    let top = Section {
        table: root,
        start: 0,
        path: String::new(),
        name: "",
    };
    ctx.check_keys(&top, TOP_KEYS);
    if let Some((key, _)) = top.get("async") {
        ctx.error(key.span(), "asynchronous invocations are not supported yet");
    }

    let empty = DeTable::new();
    let server = ctx.table(&top, "server", "[server]");
    let server = read_server(ctx, &or_empty(server, &empty, "[server]"));
    let platform = ctx.table(&top, "platform", "[platform]");
    let platform = read_platform(ctx, &or_empty(platform, &empty, "[platform]"));
    let credentials = ctx.table(&top, "credentials", "[credentials]");
    let credentials = read_credentials(ctx, &or_empty(credentials, &empty, "[credentials]"));

    let config_dir = config_dir(path);
    let mut functions: Vec<FunctionConfig> = Vec::new();
    let mut idents: Vec<Ident> = Vec::new();
    // Pinned launch ports so far, with the index of the function that pins each.
    let mut pinned_ports: HashMap<u16, usize> = HashMap::new();
    for (index, section) in ctx
        .tables(&top, "functions", "[[functions]]")
        .iter()
        .enumerate()
    {
        let (function, ident, pinned) = read_function(ctx, section, index, &config_dir);
        if let Some(ident) = ident {
            check_duplicate_function(ctx, &idents, &ident);
            idents.push(ident);
        }
        if let Some(pinned) = pinned {
            check_duplicate_port(ctx, &functions, &mut pinned_ports, pinned, index);
        }
        functions.push(function);
    }

    let mut routes = Vec::new();
    let mut seen_routes: HashMap<(Option<String>, String), usize> = HashMap::new();
    for (index, section) in ctx.tables(&top, "routes", "[[routes]]").iter().enumerate() {
        if let Some(route) = read_route(ctx, section, &idents, &mut seen_routes, index) {
            routes.push(route);
        }
    }

    Config {
        path: path.to_path_buf(),
        server,
        platform,
        credentials,
        functions,
        routes,
    }
}

/// The section if present, else an empty one (so every key takes its default).
fn or_empty<'t, 'i>(
    section: Option<Section<'t, 'i>>,
    empty: &'t DeTable<'i>,
    name: &'static str,
) -> Section<'t, 'i> {
    section.unwrap_or(Section {
        table: empty,
        start: 0,
        path: String::new(),
        name,
    })
}

fn read_server(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> ServerConfig {
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
    }
}

fn read_platform(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> PlatformConfig {
    ctx.check_keys(s, PLATFORM_KEYS);
    PlatformConfig {
        region: ctx.get_token(s, "region", "ap-guangzhou"),
        appid: ctx.get_token(s, "appid", "1250000000"),
        uin: ctx.get_token(s, "uin", "100000000001"),
    }
}

fn read_credentials(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Credentials {
    ctx.check_keys(s, CREDENTIAL_KEYS);
    Credentials {
        secret_id: ctx.get_secret(s, "secret_id"),
        secret_key: ctx.get_secret(s, "secret_key"),
        session_token: ctx.get_secret(s, "session_token"),
    }
}

/// What routes and the duplicate check need to know about a function.
struct Ident {
    namespace: String,
    name: String,
    /// `None` when `type` was invalid (already reported), so no route check piles on.
    kind: Option<FunctionKind>,
    name_span: Range<usize>,
    /// Its index in `[[functions]]` (and in [`Config::functions`]).
    index: usize,
}

/// A `launch.port` as read, with where it is written (for the duplicate check).
struct PinnedPort {
    port: u16,
    span: Range<usize>,
    /// `functions[1].launch.port`.
    path: String,
}

/// Reads one `[[functions]]` entry; the [`Ident`] is `None` when its name is unusable,
/// the [`PinnedPort`] is `Some` for a launched function with a valid `port`.
fn read_function(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    index: usize,
    config_dir: &Path,
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
    let (source, pinned) = read_source(ctx, s, config_dir);

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

/// `instances` or `launch` (exactly one of them), plus the refused `timers`.
fn read_source(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    config_dir: &Path,
) -> (InstanceSource, Option<PinnedPort>) {
    if let Some((key, _)) = s.get("timers") {
        ctx.error(key.span(), "timer triggers are not supported yet");
    }
    // Read even next to `instances`, so that its own problems are reported as well.
    let launch = ctx
        .table(s, "launch", "[functions.launch]")
        .map(|l| read_launch(ctx, &l, config_dir));
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
        match resolve_instance(&entry.value) {
            Ok(addr) => instances.push(StaticInstance {
                authority: entry.value,
                addr,
            }),
            Err(why) => ctx.error(entry.span, format!("{item_path}: {why}")),
        }
    }
    InstanceSource::Static(instances)
}

/// `[functions.launch]` (or `launch = { ... }`).
fn read_launch(
    ctx: &mut Ctx<'_>,
    l: &Section<'_, '_>,
    config_dir: &Path,
) -> (LaunchConfig, Option<PinnedPort>) {
    ctx.check_keys(l, LAUNCH_KEYS);

    let command = match ctx.get_str(l, "command", "a string") {
        Some(c) if c.value.trim().is_empty() => {
            let path = l.key_path("command");
            ctx.error(c.span, format!("{path}: must not be empty"));
            String::new()
        }
        Some(c) => no_nul(ctx, &l.key_path("command"), c).unwrap_or_default(),
        None => {
            if l.get("command").is_none() {
                let path = l.key_path("command");
                ctx.error_at_path(path, l.start, "missing required key `command`");
            }
            String::new()
        }
    };
    let args = read_launch_args(ctx, l);
    let env = read_launch_env(ctx, l);
    let workdir = read_workdir(ctx, l, config_dir);

    let port = ctx
        .get_u32_opt(l, "port", 1..=u32::from(u16::MAX))
        .and_then(|p| u16::try_from(p).ok());
    let pinned = port.and_then(|port| {
        let (_, value) = l.get("port")?;
        Some(PinnedPort {
            port,
            span: value.span(),
            path: l.key_path("port"),
        })
    });
    let (min_instances, max_instances) = read_instance_counts(ctx, l, port.is_some());

    let launch = LaunchConfig {
        command,
        args,
        env,
        workdir,
        port,
        min_instances,
        max_instances,
        ready_timeout: ctx.get_duration(l, "ready_timeout", Duration::from_secs(30), true),
        idle_timeout: ctx.get_duration(l, "idle_timeout", Duration::from_secs(300), true),
    };
    (launch, pinned)
}

/// A launched program's string (command, argument): a NUL cannot be passed to `exec`.
fn no_nul(ctx: &mut Ctx<'_>, path: &str, s: Str) -> Option<String> {
    if s.value.contains('\0') {
        ctx.error(s.span, format!("{path}: must not contain a NUL character"));
        return None;
    }
    Some(s.value)
}

/// `args = ["...", ...]`, default none.
fn read_launch_args(ctx: &mut Ctx<'_>, l: &Section<'_, '_>) -> Vec<String> {
    let Some((_, value)) = l.get("args") else {
        return Vec::new();
    };
    let path = l.key_path("args");
    let DeValue::Array(items) = value.get_ref() else {
        ctx.type_error(&path, value, "an array of strings");
        return Vec::new();
    };
    let mut args = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        if let Some(arg) = ctx.string_value(&item_path, item, "a string") {
            args.extend(no_nul(ctx, &item_path, arg));
        }
    }
    args
}

/// `env = { NAME = "value" }`, default empty. The values may hold secrets: no message
/// shows one.
fn read_launch_env(ctx: &mut Ctx<'_>, l: &Section<'_, '_>) -> Vec<(String, Secret)> {
    let Some(env) = ctx.table(l, "env", "[functions.launch.env]") else {
        return Vec::new();
    };
    let mut vars = Vec::new();
    for (key, value) in env.table.iter() {
        let name: &str = key.get_ref();
        let path = env.key_path(name);
        if !is_env_name(name) {
            let message = format!(
                "{}: invalid environment variable name {name:?}: use letters, digits and `_`, \
                 not starting with a digit",
                env.path
            );
            ctx.error(key.span(), message);
            continue;
        }
        let Some(s) = ctx.string_value(&path, value, "a string") else {
            continue;
        };
        if s.value.contains('\0') {
            let message =
                format!("{path}: must not contain a NUL character (the value is not shown)");
            ctx.error(s.span, message);
            continue;
        }
        vars.push((name.to_string(), Secret::new(s.value)));
    }
    vars
}

/// `workdir`: absolute and lexically normalized; relative to the config file's
/// directory, which is also the default. An explicit one must be an existing directory.
fn read_workdir(ctx: &mut Ctx<'_>, l: &Section<'_, '_>, config_dir: &Path) -> PathBuf {
    let path = l.key_path("workdir");
    let base = match std::path::absolute(config_dir) {
        Ok(base) => normalize_path(&base),
        Err(e) => {
            let message = format!(
                "{path}: cannot resolve the config file's directory \"{}\": {e}",
                config_dir.display()
            );
            ctx.error_at_path(path, l.start, message);
            return config_dir.to_path_buf();
        }
    };
    let Some(w) = ctx.get_str(l, "workdir", "a string") else {
        return base;
    };
    if w.value.is_empty() {
        ctx.error(w.span, format!("{path}: must not be empty"));
        return base;
    }
    let workdir = normalize_path(&base.join(&w.value));
    let problem = match std::fs::metadata(&workdir) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some("is not a directory".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".to_string()),
        Err(e) => Some(format!("cannot be used: {e}")),
    };
    if let Some(problem) = problem {
        let message = format!("{path}: directory \"{}\" {problem}", workdir.display());
        ctx.error(w.span, message);
    }
    workdir
}

/// `min_instances` and `max_instances`; a pinned port allows one instance at most.
fn read_instance_counts(ctx: &mut Ctx<'_>, l: &Section<'_, '_>, pinned: bool) -> (u32, u32) {
    let min = ctx.get_u32(l, "min_instances", 0..=MAX_INSTANCES, 0);
    let default_max = if pinned {
        PINNED_MAX_INSTANCES
    } else {
        DEFAULT_MAX_INSTANCES
    };
    let Some((_, max_value)) = l.get("max_instances") else {
        if min > default_max {
            if let Some((_, min_value)) = l.get("min_instances") {
                let path = l.key_path("min_instances");
                let why = if pinned {
                    "a pinned port allows one instance at most".to_string()
                } else {
                    format!("max_instances defaults to {DEFAULT_MAX_INSTANCES}")
                };
                let message = format!("{path}: must not exceed max_instances ({why}), found {min}");
                ctx.error(min_value.span(), message);
            }
        }
        return (min.min(default_max), default_max);
    };
    let Some(max) = ctx.get_u32_opt(l, "max_instances", 1..=MAX_INSTANCES) else {
        return (min.min(default_max), default_max);
    };
    let path = l.key_path("max_instances");
    if pinned && max > PINNED_MAX_INSTANCES {
        let message = format!("{path}: a pinned port allows one instance at most, found {max}");
        ctx.error(max_value.span(), message);
        return (min.min(PINNED_MAX_INSTANCES), PINNED_MAX_INSTANCES);
    }
    if max < min {
        let message = format!("{path}: must be at least min_instances ({min}), found {max}");
        ctx.error(max_value.span(), message);
        return (max, max);
    }
    (min, max)
}

/// Reports a `launch.port` already pinned by an earlier function.
fn check_duplicate_port(
    ctx: &mut Ctx<'_>,
    functions: &[FunctionConfig],
    seen: &mut HashMap<u16, usize>,
    pinned: PinnedPort,
    index: usize,
) {
    let Some(&first) = seen.get(&pinned.port) else {
        seen.insert(pinned.port, index);
        return;
    };
    let name = functions
        .get(first)
        .filter(|f| !f.name.is_empty() && !f.namespace.is_empty())
        .map(|f| format!(" (\"{}/{}\")", f.namespace, f.name))
        .unwrap_or_default();
    let message = format!(
        "{}: port {} is already pinned by functions[{first}]{name}; \
         two functions cannot share a pinned port",
        pinned.path, pinned.port
    );
    ctx.error(pinned.span, message);
}

fn check_duplicate_function(ctx: &mut Ctx<'_>, earlier: &[Ident], ident: &Ident) {
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

/// Reads one `[[routes]]` entry; `None` when it cannot be used (reported).
fn read_route(
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

// ---------------------------------------------------------------------------------------
// Value rules, free of the tree: easy to test on their own.
// ---------------------------------------------------------------------------------------

/// Resolves `${VAR}` references. A `$` not followed by `{` is kept as is. Problems are
/// worded without the value itself, which may be a secret.
fn expand_env(raw: &str, env: Env<'_>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(raw.len());
    let mut problems = Vec::new();
    let mut rest = raw;
    while let Some(dollar) = rest.find("${") {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 2..];
        let Some(close) = after.find('}') else {
            problems.push("unterminated `${`: expected `${NAME}`".to_string());
            rest = "";
            break;
        };
        let name = &after[..close];
        if !is_env_name(name) {
            problems.push(
                "invalid `${...}` reference: a variable name is letters, digits and `_`"
                    .to_string(),
            );
        } else {
            match env(name) {
                Some(value) => out.push_str(&value),
                None => problems.push(format!("environment variable {name} is not set")),
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Parses `"250ms"`, `"3s"`, `"0.5s"`, `"5m"`, `"1h"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The directory relative paths of the file at `path` are relative to.
fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes `.` and resolves `..` without touching the file system (symbolic links are
/// not followed). `..` at the root stays at the root.
fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::Prefix(_) | Component::RootDir) => {}
                _ => out.push(component),
            },
        }
    }
    out
}

/// Function and namespace names: non-empty, `[A-Za-z0-9_-]` only.
fn check_name(name: &str) -> Result<(), String> {
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

/// Values stamped into headers: non-empty, no whitespace or control characters.
fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_string());
    }
    Ok(())
}

/// A static instance address: `host:port`, resolved now; the first address wins.
fn resolve_instance(authority: &str) -> Result<SocketAddr, String> {
    let addr = match authority.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let no_port = || {
                format!(
                    "instance {authority:?} has no port: expected \"host:port\", \
                     e.g. \"127.0.0.1:9000\""
                )
            };
            let (host, port) = authority.rsplit_once(':').ok_or_else(no_port)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(no_port());
            }
            let mut addrs = authority
                .to_socket_addrs()
                .map_err(|e| format!("instance {authority:?} does not resolve: {e}"))?;
            addrs
                .next()
                .ok_or_else(|| format!("instance {authority:?} does not resolve to any address"))?
        }
    };
    if addr.port() == 0 {
        return Err(format!(
            "instance {authority:?}: port 0 cannot be connected to"
        ));
    }
    Ok(addr)
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

/// The allowed key closest to a misspelt one, if it is close enough to be a typo.
fn closest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2 && *distance < candidate.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            let insert = current[j] + 1;
            let delete = previous[j + 1] + 1;
            current.push(substitute.min(insert).min(delete));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LaunchConfig;

    const FILE: &str = "gateway.toml";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(text, Path::new(FILE), &|name| vars.get(name).cloned())
    }

    fn ok(text: &str) -> Config {
        match parse(text, Path::new(FILE), &no_env) {
            Ok(config) => config,
            Err(errors) => panic!("expected a valid config, got:\n{errors}"),
        }
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        errors_with(text, &[])
    }

    fn errors_with(text: &str, vars: &[(&str, &str)]) -> Vec<ConfigError> {
        match parse_with(text, vars) {
            Ok(_) => panic!("expected errors, the config was accepted"),
            Err(errors) => {
                assert_eq!(errors.file, Path::new(FILE));
                assert!(!errors.errors.is_empty(), "an Err must carry errors");
                errors.errors
            }
        }
    }

    /// The only error of `text`.
    fn one_error(text: &str) -> ConfigError {
        let mut all = errors(text);
        assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
        all.remove(0)
    }

    fn at(line: usize, col: usize) -> Location {
        Location::Position { line, col }
    }

    fn path(p: &str) -> Location {
        Location::KeyPath(p.to_string())
    }

    const FUNCTION: &str = "[[functions]]\nname = \"hello\"\ninstances = [\"127.0.0.1:9001\"]\n";

    fn static_instances(f: &FunctionConfig) -> &[StaticInstance] {
        match &f.source {
            InstanceSource::Static(instances) => instances,
            InstanceSource::Launch(_) => panic!("expected a static pool"),
        }
    }

    // ---- defaults and valid files --------------------------------------------------------

    #[test]
    fn defaults_from_a_minimal_file() {
        let config = ok(FUNCTION);
        assert_eq!(config.path, Path::new(FILE));
        let s = &config.server;
        assert_eq!(s.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(
            s.admin_listen,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(s.max_body_bytes, 6_291_456);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.workers, cpus);
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert!(!s.access_log);
        assert_eq!(s.upstream_idle_timeout, Duration::from_secs(4));
        assert_eq!(config.platform.region, "ap-guangzhou");
        assert_eq!(config.platform.appid, "1250000000");
        assert_eq!(config.platform.uin, "100000000001");
        assert!(config.credentials.secret_id.is_none());
        assert!(config.credentials.secret_key.is_none());
        assert!(config.credentials.session_token.is_none());
        assert!(config.routes.is_empty());

        let [f] = config.functions.as_slice() else {
            panic!("one function expected");
        };
        assert_eq!(f.name, "hello");
        assert_eq!(f.namespace, "default");
        assert_eq!(f.version, "$LATEST");
        assert_eq!(f.kind, FunctionKind::Event);
        assert_eq!(f.memory_mb, 128);
        assert_eq!(f.timeout, Duration::from_secs(3));
        assert_eq!(f.instance_concurrency, 1);
        assert_eq!(f.queue_depth, 100);
        assert_eq!(f.queue_timeout, Duration::from_secs(1));
        assert_eq!(
            static_instances(f),
            [StaticInstance {
                authority: "127.0.0.1:9001".to_string(),
                addr: "127.0.0.1:9001".parse().unwrap(),
            }]
        );
    }

    #[test]
    fn an_empty_file_is_valid() {
        let config = ok("");
        assert!(config.functions.is_empty());
    }

    #[test]
    fn every_key_is_read() {
        let config = ok(r#"
[server]
listen = "0.0.0.0:80"
admin_listen = "[::1]:9999"
max_body_bytes = 1024
workers = 3
shutdown_grace = "0s"
access_log = true
upstream_idle_timeout = "250ms"

[platform]
region = "ap-shanghai"
appid = "1"
uin = "2"

[[functions]]
name = "web-fn_2"
namespace = "prod"
version = "3"
type = "http"
memory_mb = 256
timeout = "1.5s"
instance_concurrency = 10
queue_depth = 0
queue_timeout = "5m"
instances = ["127.0.0.1:9001", "localhost:9002"]
"#);
        let s = &config.server;
        assert_eq!(s.listen, "0.0.0.0:80".parse::<SocketAddr>().unwrap());
        assert_eq!(s.admin_listen, "[::1]:9999".parse::<SocketAddr>().unwrap());
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(s.workers, 3);
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        assert!(s.access_log);
        assert_eq!(s.upstream_idle_timeout, Duration::from_millis(250));
        assert_eq!(config.platform.region, "ap-shanghai");
        assert_eq!(config.platform.appid, "1");
        assert_eq!(config.platform.uin, "2");
        let f = &config.functions[0];
        assert_eq!(
            (f.namespace.as_str(), f.name.as_str()),
            ("prod", "web-fn_2")
        );
        assert_eq!(f.version, "3");
        assert_eq!(f.kind, FunctionKind::Http);
        assert_eq!(f.memory_mb, 256);
        assert_eq!(f.timeout, Duration::from_millis(1500));
        assert_eq!(f.instance_concurrency, 10);
        assert_eq!(f.queue_depth, 0);
        assert_eq!(f.queue_timeout, Duration::from_secs(300));
        let instances = static_instances(f);
        assert_eq!(instances.len(), 2);
        assert_eq!(instances[1].authority, "localhost:9002");
        assert_eq!(instances[1].addr.port(), 9002);
        assert!(instances[1].addr.ip().is_loopback());
    }

    #[test]
    fn inline_tables_and_dotted_keys_work_too() {
        let config = ok(r#"
server.listen = "127.0.0.1:1"
platform = { region = "ap-beijing" }
functions = [{ name = "a", instances = ["127.0.0.1:9001"] }]
"#);
        assert_eq!(config.server.listen.port(), 1);
        assert_eq!(config.platform.region, "ap-beijing");
        assert_eq!(config.functions[0].name, "a");
    }

    // ---- syntax --------------------------------------------------------------------------

    #[test]
    fn bad_toml_is_reported_with_its_position_and_nothing_else() {
        // Line 3 is broken; the unknown key on line 2 is not reported: a file that does
        // not parse is not checked further.
        let all = errors("[server]\nbogus = 1\nlisten = \"127.0.0.1:8080\n");
        assert!(!all.is_empty());
        assert!(all
            .iter()
            .all(|e| matches!(e.location, Location::Position { line: 3, .. })));
        assert!(!all.iter().any(|e| e.message.contains("bogus")));
    }

    #[test]
    fn several_syntax_errors_are_all_reported() {
        let all = errors("a = \nb = 1\n[x\nc = \"1\"\n");
        let lines: Vec<usize> = all
            .iter()
            .filter_map(|e| match e.location {
                Location::Position { line, .. } => Some(line),
                _ => None,
            })
            .collect();
        assert!(lines.contains(&1), "{all:#?}");
        assert!(lines.contains(&3), "{all:#?}");
    }

    #[test]
    fn a_duplicate_key_is_a_syntax_error_at_the_second_one() {
        let e = one_error("[server]\nworkers = 1\nworkers = 2\n");
        assert_eq!(e.location, at(3, 1));
        assert!(e.message.contains("duplicate key"), "{}", e.message);
    }

    // ---- unknown keys ----------------------------------------------------------------------

    #[test]
    fn unknown_key_at_the_top_level() {
        let e = one_error("foo = 1\n");
        assert_eq!(e.location, at(1, 1));
        assert!(
            e.message
                .starts_with("unknown key \"foo\" at the top level"),
            "{}",
            e.message
        );
        assert!(e.message.contains("server, platform"), "{}", e.message);
    }

    #[test]
    fn unknown_tables_at_the_top_level() {
        let e = one_error("\n[servers]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(e.location, at(2, 2));
        assert!(
            e.message.contains("unknown key \"servers\""),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("did you mean `server`?"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_keys_in_every_section() {
        let text = format!(
            "[server]\nfoo = 1\n[platform]\nzone = \"x\"\n[credentials]\ntoken = \"s3cr3t\"\n\
             {FUNCTION}color = \"red\"\n[[routes]]\npath_prefix = \"/\"\nfunction = \"hello\"\n\
             weight = 1\n"
        );
        let all = errors(&text);
        let expected = [
            (at(2, 1), "unknown key \"foo\" in [server]"),
            (at(4, 1), "unknown key \"zone\" in [platform]"),
            (at(6, 1), "unknown key \"token\" in [credentials]"),
            (at(10, 1), "unknown key \"color\" in [[functions]]"),
            (at(14, 1), "unknown key \"weight\" in [[routes]]"),
        ];
        // The route also targets an event function: that is reported too.
        let unknown: Vec<&ConfigError> = all
            .iter()
            .filter(|e| e.message.starts_with("unknown key"))
            .collect();
        assert_eq!(unknown.len(), expected.len(), "{all:#?}");
        for (e, (location, start)) in unknown.iter().zip(expected) {
            assert_eq!(e.location, location, "{}", e.message);
            assert!(e.message.starts_with(start), "{}", e.message);
        }
        assert!(!all.iter().any(|e| e.message.contains("s3cr3t")));
    }

    #[test]
    fn a_short_list_of_allowed_keys_is_spelled_out() {
        let e = one_error("[platform]\nxyz = \"1\"\n");
        assert!(
            e.message.ends_with("allowed keys: region, appid, uin"),
            "{}",
            e.message
        );
        let e = one_error("[server]\nlistne = \"127.0.0.1:1\"\n");
        assert!(
            e.message.contains("did you mean `listen`?"),
            "{}",
            e.message
        );
    }

    // ---- types -----------------------------------------------------------------------------

    #[test]
    fn wrong_types_name_the_key_and_both_types() {
        let text = format!(
            "[server]\nlisten = 8080\naccess_log = \"yes\"\nmax_body_bytes = 1.5\n\
             {FUNCTION}timeout = 3\nmemory_mb = \"128\"\n"
        );
        let all = errors(&text);
        let expected = [
            (at(2, 10), "server.listen: expected an address string such as \"127.0.0.1:8080\", found integer"),
            (at(3, 14), "server.access_log: expected a boolean (true or false), found string"),
            (at(4, 18), "server.max_body_bytes: expected an integer, found float"),
            (at(8, 11), "functions[0].timeout: expected a duration string such as \"3s\", found integer"),
            (at(9, 13), "functions[0].memory_mb: expected an integer, found string"),
        ];
        assert_eq!(all.len(), expected.len(), "{all:#?}");
        for (e, (location, message)) in all.iter().zip(expected) {
            assert_eq!((&e.location, e.message.as_str()), (&location, message));
        }
    }

    #[test]
    fn sections_of_the_wrong_shape() {
        let all = errors("server = 1\nfunctions = 2\n[routes]\npath_prefix = \"/\"\n");
        let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "server: expected a table, found integer",
                "functions: expected an array of tables ([[functions]]), found integer",
                "routes: expected an array of tables ([[routes]]), found table",
            ]
        );
    }

    #[test]
    fn integers_out_of_range() {
        let text = format!(
            "[server]\nworkers = 0\nmax_body_bytes = -1\n{FUNCTION}memory_mb = 32\n\
             instance_concurrency = 0\nqueue_depth = 2000000\n"
        );
        let messages: Vec<String> = errors(&text).into_iter().map(|e| e.message).collect();
        assert_eq!(
            messages,
            [
                "server.workers: must be between 1 and 1024, found 0",
                "server.max_body_bytes: must be at least 1, found -1",
                "functions[0].memory_mb: must be between 64 and 65536, found 32",
                "functions[0].instance_concurrency: must be between 1 and 1000, found 0",
                "functions[0].queue_depth: must be between 0 and 1000000, found 2000000",
            ]
        );
    }

    #[test]
    fn bad_addresses_and_clashing_listeners() {
        let all = errors("[server]\nlisten = \"localhost:80\"\n");
        assert!(all[0]
            .message
            .starts_with("server.listen: invalid address \"localhost:80\""));
        let e = one_error("[server]\nlisten = \"127.0.0.1:9090\"\n");
        assert!(e.message.contains("must differ"), "{}", e.message);
        // Port 0 (the system picks) on both is fine.
        ok("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
    }

    // ---- durations -------------------------------------------------------------------------

    #[test]
    fn durations_with_units_and_decimals() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("3s", Duration::from_secs(3)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("0.5s", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.5ms", Duration::from_micros(1500)),
            ("0.25h", Duration::from_secs(900)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_durations() {
        for text in [
            "3", "-3s", "3x", "s", "", "abc", "1.s", ".5s", "1.2.3s", "3 s", "3S", "1e3s",
        ] {
            let why = parse_duration(text).unwrap_err();
            assert_eq!(
                why,
                format!(
                    "invalid duration {text:?}: expected a number with a unit (ms, s, m, h), \
                     e.g. \"3s\" or \"250ms\""
                )
            );
        }
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn bad_durations_in_the_file() {
        let text = format!(
            "[server]\nshutdown_grace = \"30\"\nupstream_idle_timeout = \"0ms\"\n\
             {FUNCTION}timeout = \"0s\"\nqueue_timeout = \"-1s\"\n"
        );
        let all = errors(&text);
        let expected = [
            (at(2, 18), "server.shutdown_grace: invalid duration \"30\": expected a number with a unit (ms, s, m, h), e.g. \"3s\" or \"250ms\""),
            (at(3, 25), "server.upstream_idle_timeout: must be greater than zero, found \"0ms\""),
            (at(7, 11), "functions[0].timeout: must be greater than zero, found \"0s\""),
            (at(8, 17), "functions[0].queue_timeout: invalid duration \"-1s\": expected a number with a unit (ms, s, m, h), e.g. \"3s\" or \"250ms\""),
        ];
        assert_eq!(all.len(), expected.len(), "{all:#?}");
        for (e, (location, message)) in all.iter().zip(expected) {
            assert_eq!((&e.location, e.message.as_str()), (&location, message));
        }
    }

    // ---- functions -------------------------------------------------------------------------

    #[test]
    fn duplicate_functions_are_reported_at_the_second_name() {
        let text = format!("{FUNCTION}\n{FUNCTION}");
        let e = one_error(&text);
        assert_eq!(e.location, at(6, 8));
        assert_eq!(
            e.message,
            "duplicate function \"default/hello\": already defined by functions[0]"
        );
        // The same name in another namespace is another function.
        ok(&format!(
            "{FUNCTION}namespace = \"a\"\n{FUNCTION}namespace = \"b\"\n"
        ));
    }

    #[test]
    fn names_are_required_and_restricted() {
        let all = errors(
            "[[functions]]\ninstances = [\"127.0.0.1:1\"]\n\
             [[functions]]\nname = \"a b\"\nnamespace = \"\"\ninstances = [\"127.0.0.1:1\"]\n\
             [[functions]]\nname = \"c\"\nversion = \"v 1\"\ntype = \"web\"\ninstances = [\"127.0.0.1:1\"]\n",
        );
        let found: Vec<(&Location, &str)> = all
            .iter()
            .map(|e| (&e.location, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (&path("functions[0].name"), "missing required key `name`"),
                (
                    &at(4, 8),
                    "functions[1].name: invalid name \"a b\": use only letters, digits, `-` and `_`"
                ),
                (&at(5, 13), "functions[1].namespace: invalid namespace \"\": must not be empty"),
                (
                    &at(9, 11),
                    "functions[2].version: invalid value \"v 1\": must not contain whitespace or control characters"
                ),
                (
                    &at(10, 8),
                    "functions[2].type: unknown function type \"web\": expected \"event\" or \"http\""
                ),
            ]
        );
    }

    #[test]
    fn instances_and_launch_together() {
        let text = format!("{FUNCTION}[functions.launch]\ncommand = \"python3\"\n");
        let e = one_error(&text);
        assert_eq!(e.location, at(4, 12));
        assert_eq!(e.message, "set either `instances` or `launch`, not both");
        // The launch table's own problems are still reported.
        let text = format!("{FUNCTION}launch = {{ command = \"\" }}\n");
        let messages: Vec<String> = errors(&text).into_iter().map(|e| e.message).collect();
        assert_eq!(
            messages,
            [
                "set either `instances` or `launch`, not both",
                "functions[0].launch.command: must not be empty",
            ]
        );
    }

    #[test]
    fn neither_instances_nor_launch() {
        let e = one_error("[[functions]]\nname = \"a\"\n");
        assert_eq!(e.location, path("functions[0]"));
        assert_eq!(e.message, "one of `instances` or `launch` is required");
    }

    #[test]
    fn timers_are_refused_as_not_built_yet() {
        let text =
            format!("{FUNCTION}[[functions.timers]]\nname = \"t\"\ncron = \"* * * * * * *\"\n");
        let e = one_error(&text);
        assert_eq!(e.location, at(4, 13));
        assert_eq!(e.message, "timer triggers are not supported yet");
    }

    #[test]
    fn async_is_refused_as_not_built_yet() {
        let e = one_error("[async]\nstore = \"embedded\"\n");
        assert_eq!(e.location, at(1, 2));
        assert_eq!(e.message, "asynchronous invocations are not supported yet");
    }

    #[test]
    fn bad_instances() {
        let all = errors(
            "[[functions]]\nname = \"a\"\ninstances = [\"127.0.0.1\", 9001, \"127.0.0.1:0\", \"h:x\"]\n\
             [[functions]]\nname = \"b\"\ninstances = []\n\
             [[functions]]\nname = \"c\"\ninstances = \"127.0.0.1:1\"\n",
        );
        let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "functions[0].instances[0]: instance \"127.0.0.1\" has no port: expected \"host:port\", e.g. \"127.0.0.1:9000\"",
                "functions[0].instances[1]: expected a \"host:port\" string, found integer",
                "functions[0].instances[2]: instance \"127.0.0.1:0\": port 0 cannot be connected to",
                "functions[0].instances[3]: instance \"h:x\" has no port: expected \"host:port\", e.g. \"127.0.0.1:9000\"",
                "functions[1].instances: must list at least one \"host:port\" address",
                "functions[2].instances: expected an array of \"host:port\" strings, found string",
            ]
        );
        assert_eq!(all[0].location, at(3, 14));
        assert_eq!(all[1].location, at(3, 27));
    }

    #[test]
    fn an_instance_that_does_not_resolve_is_named() {
        let e =
            one_error("[[functions]]\nname = \"a\"\ninstances = [\"no-such-host.invalid:9000\"]\n");
        assert!(
            e.message.starts_with(
                "functions[0].instances[0]: instance \"no-such-host.invalid:9000\" does not resolve"
            ),
            "{}",
            e.message
        );
    }

    // ---- launched instances ----------------------------------------------------------------

    /// A launched function, lines 1 to 4; launch keys follow from line 5.
    const LAUNCH: &str = "[[functions]]\nname = \"a\"\n[functions.launch]\ncommand = \"python3\"\n";

    fn launch_of(f: &FunctionConfig) -> &LaunchConfig {
        match &f.source {
            InstanceSource::Launch(launch) => launch,
            InstanceSource::Static(_) => panic!("expected a launched function"),
        }
    }

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("scf-gateway-parse-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse_at(text: &str, file: &Path, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(text, file, &|name| vars.get(name).cloned())
    }

    fn cwd() -> PathBuf {
        std::env::current_dir().unwrap()
    }

    #[test]
    fn launch_defaults() {
        let config = ok(LAUNCH);
        let l = launch_of(&config.functions[0]);
        assert_eq!(l.command, "python3");
        assert!(l.args.is_empty());
        assert!(l.env.is_empty());
        // The config file's directory: here `gateway.toml` is relative to the process.
        assert_eq!(l.workdir, cwd());
        assert!(l.workdir.is_absolute());
        assert_eq!(l.port, None);
        assert_eq!(l.min_instances, 0);
        assert_eq!(l.max_instances, 4);
        assert_eq!(l.ready_timeout, Duration::from_secs(30));
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn every_launch_key_is_read() {
        let dir = TempDir::new("every-key");
        std::fs::create_dir_all(dir.0.join("functions/thumbnail")).unwrap();
        let text = r#"
[[functions]]
name = "thumbnail"
[functions.launch]
command = "${PY}"
args = ["app.py", "--port=${P}", "$LATEST"]
env = { GREETING = "hi", _TOKEN2 = "${SECRET}", EMPTY = "" }
workdir = "functions/./x/../thumbnail/"
port = 9000
min_instances = 1
max_instances = 1
ready_timeout = "1.5s"
idle_timeout = "10m"
"#;
        let vars = [("PY", "python3"), ("P", "9000"), ("SECRET", "t0p-s3cret")];
        let config = match parse_at(text, &dir.0.join("gateway.toml"), &vars) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        let l = launch_of(&config.functions[0]);
        assert_eq!(l.command, "python3");
        assert_eq!(l.args, ["app.py", "--port=9000", "$LATEST"]);
        let env: Vec<(&str, &str)> = l
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(env.len(), 3);
        for var in [("GREETING", "hi"), ("_TOKEN2", "t0p-s3cret"), ("EMPTY", "")] {
            assert!(env.contains(&var), "{env:?}");
        }
        assert_eq!(l.workdir, dir.0.join("functions/thumbnail"));
        assert_eq!(l.port, Some(9000));
        assert_eq!((l.min_instances, l.max_instances), (1, 1));
        assert_eq!(l.ready_timeout, Duration::from_millis(1500));
        assert_eq!(l.idle_timeout, Duration::from_secs(600));
        let debug = format!("{config:?}");
        assert!(!debug.contains("t0p-s3cret"), "{debug}");
    }

    #[test]
    fn launch_as_an_inline_table() {
        let config = ok(
            "[[functions]]\nname = \"a\"\n\
             launch = { command = \"node\", args = [\"index.js\"], env = { A = \"1\" }, max_instances = 2 }\n",
        );
        let l = launch_of(&config.functions[0]);
        assert_eq!(
            (l.command.as_str(), l.args.as_slice()),
            ("node", &["index.js".to_string()][..])
        );
        assert_eq!(l.env[0].0, "A");
        assert_eq!(l.env[0].1.expose(), "1");
        assert_eq!(l.max_instances, 2);

        let config = ok("functions = [{ name = \"b\", launch = { command = \"x\" } }]\n");
        assert_eq!(launch_of(&config.functions[0]).command, "x");

        // `[functions.launch.env]` as its own table works as well.
        let config = ok(&format!("{LAUNCH}[functions.launch.env]\nB = \"2\"\n"));
        assert_eq!(launch_of(&config.functions[0]).env[0].0, "B");
    }

    #[test]
    fn a_relative_workdir_is_relative_to_the_config_files_directory() {
        // The file is `tests/gateway.toml` relative to the process: `../src` is `<cwd>/src`.
        let text = format!("{LAUNCH}workdir = \"../src\"\n");
        let config = match parse_at(&text, Path::new("tests/gateway.toml"), &[]) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        let l = launch_of(&config.functions[0]);
        assert_eq!(l.workdir, cwd().join("src"));
        // Without `workdir`, the file's own directory, made absolute.
        let config = parse_at(LAUNCH, Path::new("./tests/gateway.toml"), &[]).unwrap();
        assert_eq!(launch_of(&config.functions[0]).workdir, cwd().join("tests"));
    }

    #[test]
    fn an_absolute_workdir_is_kept() {
        let dir = TempDir::new("absolute");
        let text = format!("{LAUNCH}workdir = \"{}/.\"\n", dir.0.display());
        let config = ok(&text);
        assert_eq!(launch_of(&config.functions[0]).workdir, dir.0);
    }

    #[test]
    fn a_workdir_that_is_missing_or_not_a_directory() {
        let all = errors(&format!("{LAUNCH}workdir = \"no-such-dir\"\n"));
        let missing = cwd().join("no-such-dir");
        assert_eq!(
            all,
            [ConfigError {
                location: at(5, 11),
                message: format!(
                    "functions[0].launch.workdir: directory \"{}\" does not exist",
                    missing.display()
                ),
            }]
        );
        let e = one_error(&format!("{LAUNCH}workdir = \"Cargo.toml\"\n"));
        assert_eq!(e.location, at(5, 11));
        assert_eq!(
            e.message,
            format!(
                "functions[0].launch.workdir: directory \"{}\" is not a directory",
                cwd().join("Cargo.toml").display()
            )
        );
        let e = one_error(&format!("{LAUNCH}workdir = \"\"\n"));
        assert_eq!(e.message, "functions[0].launch.workdir: must not be empty");
    }

    #[test]
    fn launch_env_rules() {
        let text = format!(
            "{LAUNCH}env = {{ OK = \"${{SET}}\", TOKEN = \"${{SECRET_TOKEN}}\", 1X = \"a\", \"A-B\" = \"b\", N = 5 }}\n"
        );
        let all = errors_with(&text, &[("SET", "visible-only-in-env")]);
        let found: Vec<(&Location, &str)> = all
            .iter()
            .map(|e| (&e.location, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    &at(5, 32),
                    "functions[0].launch.env.TOKEN: environment variable SECRET_TOKEN is not set"
                ),
                (
                    &at(5, 51),
                    "functions[0].launch.env: invalid environment variable name \"1X\": \
                     use letters, digits and `_`, not starting with a digit"
                ),
                (
                    &at(5, 61),
                    "functions[0].launch.env: invalid environment variable name \"A-B\": \
                     use letters, digits and `_`, not starting with a digit"
                ),
                (
                    &at(5, 78),
                    "functions[0].launch.env.N: expected a string, found integer"
                ),
            ]
        );
        for e in &all {
            assert!(!e.message.contains("visible-only-in-env"), "{}", e.message);
        }
        let e = one_error(&format!("{LAUNCH}env = [\"A=1\"]\n"));
        assert_eq!(
            e.message,
            "functions[0].launch.env: expected a table, found array"
        );
        let e = errors_with(
            &format!("{LAUNCH}env = {{ A = \"${{V}}\" }}\n"),
            &[("V", "x\0y")],
        );
        assert_eq!(
            e[0].message,
            "functions[0].launch.env.A: must not contain a NUL character (the value is not shown)"
        );
    }

    #[test]
    fn command_and_args_rules() {
        let e = one_error("[[functions]]\nname = \"a\"\n[functions.launch]\nargs = []\n");
        assert_eq!(e.location, path("functions[0].launch.command"));
        assert_eq!(e.message, "missing required key `command`");
        let e = one_error("[[functions]]\nname = \"a\"\nlaunch = { command = \" \" }\n");
        assert_eq!(e.location, at(3, 22));
        assert_eq!(e.message, "functions[0].launch.command: must not be empty");
        let all = errors(&format!("{LAUNCH}args = [\"a\", 1]\n"));
        assert_eq!(all[0].location, at(5, 14));
        assert_eq!(
            all[0].message,
            "functions[0].launch.args[1]: expected a string, found integer"
        );
        let e = one_error(&format!("{LAUNCH}args = \"app.py\"\n"));
        assert_eq!(
            e.message,
            "functions[0].launch.args: expected an array of strings, found string"
        );
        let e = one_error("[[functions]]\nname = \"a\"\nlaunch = \"python3\"\n");
        assert_eq!(e.location, at(3, 10));
        assert_eq!(
            e.message,
            "functions[0].launch: expected a table, found string"
        );
    }

    #[test]
    fn unknown_keys_in_launch() {
        let e = one_error(&format!("{LAUNCH}comand = \"x\"\n"));
        assert_eq!(e.location, at(5, 1));
        assert_eq!(
            e.message,
            "unknown key \"comand\" in [functions.launch] (did you mean `command`?)"
        );
        let e =
            one_error("[[functions]]\nname = \"a\"\nlaunch = { command = \"x\", replicas = 2 }\n");
        assert_eq!(e.location, at(3, 27));
        assert!(
            e.message
                .starts_with("unknown key \"replicas\" in [functions.launch]"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_pinned_port_allows_one_instance() {
        let config = ok(&format!("{LAUNCH}port = 9000\n"));
        let l = launch_of(&config.functions[0]);
        assert_eq!(
            (l.port, l.min_instances, l.max_instances),
            (Some(9000), 0, 1)
        );
        let config = ok(&format!(
            "{LAUNCH}port = 9000\nmin_instances = 1\nmax_instances = 1\n"
        ));
        let l = launch_of(&config.functions[0]);
        assert_eq!((l.min_instances, l.max_instances), (1, 1));

        let e = one_error(&format!("{LAUNCH}port = 9000\nmax_instances = 2\n"));
        assert_eq!(e.location, at(6, 17));
        assert_eq!(
            e.message,
            "functions[0].launch.max_instances: a pinned port allows one instance at most, found 2"
        );
        let e = one_error(&format!("{LAUNCH}port = 9000\nmin_instances = 2\n"));
        assert_eq!(e.location, at(6, 17));
        assert_eq!(
            e.message,
            "functions[0].launch.min_instances: must not exceed max_instances \
             (a pinned port allows one instance at most), found 2"
        );
        let messages: Vec<String> = errors(&format!("{LAUNCH}port = 0\n[[functions]]\nname = \"b\"\nlaunch = {{ command = \"x\", port = 65536 }}\n"))
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            messages,
            [
                "functions[0].launch.port: must be between 1 and 65535, found 0",
                "functions[1].launch.port: must be between 1 and 65535, found 65536",
            ]
        );
    }

    #[test]
    fn two_functions_cannot_pin_the_same_port() {
        let text = "[[functions]]\nname = \"a\"\nlaunch = { command = \"x\", port = 9000 }\n\
                    [[functions]]\nname = \"b\"\nlaunch = { command = \"x\", port = 9001 }\n\
                    [[functions]]\nname = \"c\"\nnamespace = \"n\"\nlaunch = { command = \"x\", port = 9000 }\n";
        let e = one_error(text);
        assert_eq!(e.location, at(10, 34));
        assert_eq!(
            e.message,
            "functions[2].launch.port: port 9000 is already pinned by functions[0] \
             (\"default/a\"); two functions cannot share a pinned port"
        );
    }

    #[test]
    fn instance_counts() {
        let config = ok(&format!("{LAUNCH}min_instances = 2\nmax_instances = 2\n"));
        let l = launch_of(&config.functions[0]);
        assert_eq!((l.min_instances, l.max_instances), (2, 2));

        let e = one_error(&format!("{LAUNCH}min_instances = 5\nmax_instances = 3\n"));
        assert_eq!(e.location, at(6, 17));
        assert_eq!(
            e.message,
            "functions[0].launch.max_instances: must be at least min_instances (5), found 3"
        );
        let e = one_error(&format!("{LAUNCH}min_instances = 5\n"));
        assert_eq!(e.location, at(5, 17));
        assert_eq!(
            e.message,
            "functions[0].launch.min_instances: must not exceed max_instances \
             (max_instances defaults to 4), found 5"
        );
        let e = one_error(&format!("{LAUNCH}max_instances = 0\n"));
        assert_eq!(e.location, at(5, 17));
        assert_eq!(
            e.message,
            "functions[0].launch.max_instances: must be between 1 and 1000, found 0"
        );
        let e = one_error(&format!("{LAUNCH}min_instances = -1\n"));
        assert_eq!(
            e.message,
            "functions[0].launch.min_instances: must be between 0 and 1000, found -1"
        );
    }

    #[test]
    fn launch_timeouts_must_be_positive() {
        let messages: Vec<String> = errors(&format!(
            "{LAUNCH}ready_timeout = \"0s\"\nidle_timeout = \"0ms\"\n"
        ))
        .into_iter()
        .map(|e| e.message)
        .collect();
        assert_eq!(
            messages,
            [
                "functions[0].launch.ready_timeout: must be greater than zero, found \"0s\"",
                "functions[0].launch.idle_timeout: must be greater than zero, found \"0ms\"",
            ]
        );
    }

    #[test]
    fn lexical_normalization() {
        assert_eq!(normalize_path(Path::new("/a/./b/../c/")), Path::new("/a/c"));
        assert_eq!(normalize_path(Path::new("/../a")), Path::new("/a"));
        assert_eq!(normalize_path(Path::new("a/../../b")), Path::new("../b"));
        assert_eq!(config_dir(Path::new("gateway.toml")), Path::new("."));
        assert_eq!(
            config_dir(Path::new("/etc/gw/g.toml")),
            Path::new("/etc/gw")
        );
        assert!(is_env_name("_A1"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("A.B"));
    }

    // ---- routes ----------------------------------------------------------------------------

    const WEB: &str =
        "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"127.0.0.1:9002\"]\n";

    #[test]
    fn routes_are_normalized() {
        let config = ok(&format!(
            "{FUNCTION}{WEB}\
             [[routes]]\npath_prefix = \"/web/\"\nfunction = \"web\"\n\
             [[routes]]\nhost = \"Example.COM:8080\"\npath_prefix = \"/\"\nfunction = \"default/web\"\nstrip_prefix = true\n\
             [[routes]]\nhost = \"[::1]:80\"\npath_prefix = \"/a//\"\nfunction = \"web\"\n"
        ));
        let routes: Vec<(Option<&str>, &str, usize, bool)> = config
            .routes
            .iter()
            .map(|r| {
                (
                    r.host.as_deref(),
                    r.path_prefix.as_str(),
                    r.function,
                    r.strip_prefix,
                )
            })
            .collect();
        assert_eq!(
            routes,
            [
                (None, "/web", 1, false),
                (Some("example.com"), "/", 1, true),
                (Some("[::1]"), "/a", 1, false),
            ]
        );
    }

    #[test]
    fn routes_name_functions_with_their_namespace() {
        let config = ok(&format!(
            "{WEB}namespace = \"prod\"\n{WEB}\
             [[routes]]\npath_prefix = \"/p\"\nfunction = \"prod/web\"\n\
             [[routes]]\npath_prefix = \"/d\"\nfunction = \"web\"\n"
        ));
        assert_eq!(config.routes[0].function, 0);
        assert_eq!(config.routes[1].function, 1);
    }

    #[test]
    fn a_route_to_an_unknown_function() {
        let e = one_error(&format!(
            "{WEB}[[routes]]\npath_prefix = \"/x\"\nfunction = \"prod/web\"\n"
        ));
        assert_eq!(e.location, at(7, 12));
        assert_eq!(
            e.message,
            "routes[0].function: route to unknown function \"web\" in namespace \"prod\" \
             (no [[functions]] entry has that name)"
        );
    }

    #[test]
    fn a_route_to_an_event_function() {
        let e = one_error(&format!(
            "{FUNCTION}[[routes]]\npath_prefix = \"/x\"\nfunction = \"hello\"\n"
        ));
        assert_eq!(e.location, at(6, 12));
        assert_eq!(
            e.message,
            "routes[0].function: routes can only target functions of type \"http\"; \
             \"default/hello\" is of type \"event\""
        );
    }

    #[test]
    fn duplicate_routes() {
        let e = one_error(&format!(
            "{WEB}[[routes]]\nhost = \"a.com\"\npath_prefix = \"/x\"\nfunction = \"web\"\n\
             [[routes]]\nhost = \"A.com:81\"\npath_prefix = \"/x/\"\nfunction = \"web\"\n"
        ));
        assert_eq!(e.location, at(11, 15));
        assert_eq!(
            e.message,
            "duplicate route: host \"a.com\" and path_prefix \"/x\" are already used by routes[0]"
        );
    }

    #[test]
    fn bad_routes() {
        let all = errors(&format!(
            "{WEB}[[routes]]\nhost = \"*.a.com\"\npath_prefix = \"x\"\nfunction = \"a/b/c\"\n\
             [[routes]]\nstrip_prefix = 1\n"
        ));
        let found: Vec<(&Location, &str)> = all
            .iter()
            .map(|e| (&e.location, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (&at(6, 8), "routes[0].host: invalid host \"*.a.com\": wildcards other than \"*\" alone are not supported"),
                (&at(7, 15), "routes[0].path_prefix: invalid path_prefix \"x\": must start with \"/\""),
                (&at(8, 12), "routes[0].function: invalid function reference \"a/b/c\": expected \"name\" or \"namespace/name\""),
                (&path("routes[1].path_prefix"), "missing required key `path_prefix`"),
                (&path("routes[1].function"), "missing required key `function`"),
                (&at(10, 16), "routes[1].strip_prefix: expected a boolean (true or false), found integer"),
            ]
        );
    }

    #[test]
    fn a_function_with_a_bad_type_does_not_also_fail_its_routes() {
        let all = errors(
            "[[functions]]\nname = \"w\"\ntype = \"web\"\ninstances = [\"127.0.0.1:1\"]\n\
             [[routes]]\npath_prefix = \"/\"\nfunction = \"w\"\n",
        );
        assert_eq!(all.len(), 1, "{all:#?}");
    }

    #[test]
    fn host_and_prefix_rules() {
        assert_eq!(parse_host("*"), Ok(None));
        assert_eq!(
            parse_host("API.Example.com"),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(parse_host("a.com:8080"), Ok(Some("a.com".into())));
        assert_eq!(parse_host("[::1]:8080"), Ok(Some("[::1]".into())));
        assert_eq!(parse_host("[::1]"), Ok(Some("[::1]".into())));
        assert!(parse_host("[::1]x").is_err());
        assert!(parse_host("[::1").is_err());
        assert!(parse_host("").is_err());
        assert!(parse_host(":80").is_err());
        assert!(parse_host("a b").is_err());
        assert_eq!(normalize_prefix("/"), Ok("/".into()));
        assert_eq!(normalize_prefix("/web/"), Ok("/web".into()));
        assert_eq!(normalize_prefix("/web"), Ok("/web".into()));
        assert!(normalize_prefix("web").is_err());
        assert!(normalize_prefix("/a?b").is_err());
    }

    // ---- environment variables and secrets -------------------------------------------------

    #[test]
    fn a_missing_variable_is_named_at_the_value() {
        let all = errors(
            "[credentials]\nsecret_id = \"${SCF_SECRET_ID}\"\nsecret_key = \"${SCF_SECRET_KEY}\"\n",
        );
        let found: Vec<(&Location, &str)> = all
            .iter()
            .map(|e| (&e.location, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    &at(2, 13),
                    "credentials.secret_id: environment variable SCF_SECRET_ID is not set"
                ),
                (
                    &at(3, 14),
                    "credentials.secret_key: environment variable SCF_SECRET_KEY is not set"
                ),
            ]
        );
    }

    #[test]
    fn variables_resolve_in_any_string_before_it_is_interpreted() {
        let text = "[server]\nlisten = \"${HOST}:${PORT}\"\n\
                    [credentials]\nsecret_id = \"id-${ID}\"\nsecret_key = \"${KEY}\"\nsession_token = \"${EMPTY}\"\n\
                    [[functions]]\nname = \"${NAME}\"\ntimeout = \"${T}\"\nversion = \"$LATEST\"\n\
                    instances = [\"${UPSTREAM}\"]\n";
        let vars = [
            ("HOST", "127.0.0.1"),
            ("PORT", "7000"),
            ("ID", "abc"),
            ("KEY", "k$y"),
            ("EMPTY", ""),
            ("NAME", "fn"),
            ("T", "250ms"),
            ("UPSTREAM", "127.0.0.1:9009"),
        ];
        let config = match parse_with(text, &vars) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        assert_eq!(
            config.server.listen,
            "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
        );
        let creds = &config.credentials;
        assert_eq!(creds.secret_id.as_ref().map(Secret::expose), Some("id-abc"));
        assert_eq!(creds.secret_key.as_ref().map(Secret::expose), Some("k$y"));
        assert!(
            creds.session_token.is_none(),
            "an empty credential is not configured"
        );
        let f = &config.functions[0];
        assert_eq!(f.name, "fn");
        assert_eq!(f.timeout, Duration::from_millis(250));
        assert_eq!(f.version, "$LATEST");
        assert_eq!(static_instances(f)[0].authority, "127.0.0.1:9009");
    }

    #[test]
    fn expansion_rules() {
        let env = |name: &str| (name == "A").then(|| "x".to_string());
        assert_eq!(expand_env("$LATEST", &env), Ok("$LATEST".into()));
        assert_eq!(expand_env("a$b$", &env), Ok("a$b$".into()));
        assert_eq!(expand_env("${A}-${A}", &env), Ok("x-x".into()));
        assert_eq!(
            expand_env("${B}${C}", &env),
            Err(vec![
                "environment variable B is not set".to_string(),
                "environment variable C is not set".to_string()
            ])
        );
        assert!(expand_env("${A", &env).is_err());
        assert!(expand_env("${}", &env).is_err());
        assert!(expand_env("${A-B}", &env).is_err());
    }

    #[test]
    fn secrets_never_appear_in_messages_or_debug_output() {
        let secret = "hunter2-very-secret";
        let text = "[credentials]\nsecret_id = \"${ID}\"\nsecret_key = \"${KEY}\"\n\
                    session_token = \"${TOKEN\"\n[server]\nbogus = 1\n";
        let vars = [
            ("ID", "hunter2-very-secret"),
            ("KEY", "hunter2-very-secret\n"),
        ];
        let all = errors_with(text, &vars);
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all[0]
            .message
            .starts_with("credentials.secret_key: contains a control character"));
        assert!(all[1]
            .message
            .starts_with("credentials.session_token: unterminated"));
        for e in &all {
            assert!(!e.message.contains("hunter2"), "{}", e.message);
            assert!(!e.message.contains("TOKEN"), "{}", e.message);
        }

        let text = "[credentials]\nsecret_id = \"hunter2-very-secret\"\n";
        let config = ok(text);
        let debug = format!("{config:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains("***"));
        let wrong = one_error("[credentials]\nsecret_key = 1234567\n");
        assert_eq!(
            wrong.message,
            "credentials.secret_key: expected a string, found integer"
        );
    }

    // ---- many problems, positions ----------------------------------------------------------

    #[test]
    fn several_errors_are_reported_at_once_in_file_order() {
        let text = "[[routes]]\npath_prefix = \"/\"\nfunction = \"nope\"\n\
                    [server]\nworkers = \"2\"\n\
                    [[functions]]\nname = \"a\"\ntimeout = \"3\"\n\
                    [async]\n";
        let all = errors(text);
        let lines: Vec<Location> = all.iter().map(|e| e.location.clone()).collect();
        assert_eq!(
            lines,
            [
                at(3, 12),
                at(5, 11),
                path("functions[0]"),
                at(8, 11),
                at(9, 2)
            ],
            "{all:#?}"
        );
    }

    #[test]
    fn columns_are_counted_in_characters() {
        let e = one_error("platform = { region = \"ééé\", bogus = \"1\" }\n");
        assert_eq!(e.location, at(1, 30));
    }

    #[test]
    fn crlf_line_endings() {
        let e = one_error("[server]\r\n\r\nfoo = 1\r\n");
        assert_eq!(e.location, at(3, 1));
    }

    #[test]
    fn errors_display_as_the_contract_says() {
        let err = parse("[[functions]]\nname = 1\n", Path::new("g.toml"), &no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "error: g.toml: functions[0]: one of `instances` or `launch` is required\n\
             error: g.toml:2:8: functions[0].name: expected a string, found integer"
        );
    }
}
