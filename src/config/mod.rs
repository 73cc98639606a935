//! The validated configuration: what the TOML file says, checked once at start-up so
//! that nothing on the request path ever has to wonder whether a value makes sense.
//!
//! Loading is two steps. [`parse()`] walks the spanned TOML tree, resolves `${VAR}`
//! references, applies the contract's defaults and collects *every* problem it finds
//! (each with a `file:line:col` or a key path) instead of stopping at the first one.
//! The result is the plain data below, which the rest of the gateway consumes.
//!
//! The walk, by file:
//! - `parse`: the entry point and the top level, section by section;
//! - `walk`: the walking context, positions and the collected problems;
//! - `values`: typed values (integers in range, durations, addresses, secrets);
//! - `env`: `${VAR}` resolution;
//! - `server` (with `tls`), `platform` (with `[credentials]`), `images`, `functions`
//!   (with `timers`), `launch`, `routes`, `discovery`, `asynchronous` (`[async]`): one
//!   section each, with its keys, defaults and rules.

mod api;
mod asynchronous;
mod discovery;
mod env;
mod functions;
mod images;
mod launch;
mod parse;
mod platform;
mod routes;
mod server;
mod timers;
mod tls;
mod values;
mod walk;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::asynchronous::cron::Schedule;

pub use launch::ISOLATED_PORT;
pub use parse::parse;
pub use tls::TlsConfig;

/// The response-size limit the platform puts on event functions (6 MB).
pub const EVENT_RESPONSE_LIMIT: u64 = 6 * 1024 * 1024;

/// A whole, validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (used in messages and to resolve relative paths).
    pub path: PathBuf,
    pub server: ServerConfig,
    pub platform: PlatformConfig,
    pub credentials: Credentials,
    pub images: ImagesConfig,
    pub functions: Vec<FunctionConfig>,
    pub routes: Vec<RouteConfig>,
    pub discovery: DiscoveryConfig,
    /// `[async]`: where `Event` invocations and timer ticks wait, and how they are
    /// retried and kept.
    pub asynchronous: AsyncConfig,
    /// `[api]`: the Tencent Cloud API 3.0 endpoint's keys.
    pub api: ApiConfig,
}

/// `[api]`: who may call the Tencent Cloud API 3.0 endpoint on `server.listen`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// `[[api.keys]]`, SecretIds unique. The endpoint is on only when there is one.
    pub keys: Vec<ApiKey>,
}

impl ApiConfig {
    /// Whether `POST /` with `X-TC-Action` is answered by the API.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The secret key of `secret_id`.
    pub fn secret_key(&self, secret_id: &str) -> Option<&Secret> {
        self.keys
            .iter()
            .find(|k| k.secret_id == secret_id)
            .map(|k| &k.secret_key)
    }
}

/// One `[[api.keys]]` entry: a SecretId and the secret key that signs its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub secret_id: String,
    pub secret_key: Secret,
}

/// `[async]`: the durable store of asynchronous invocations and its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncConfig {
    /// True when the file has an `[async]` section: the store is opened at start.
    /// Without one, the embedded store opens at the first `Event` invocation (or at
    /// start if its database already exists, so that waiting events resume).
    pub configured: bool,
    pub store: AsyncStore,
    /// Failed attempts are retried this many times. Default 2.
    pub retries: u32,
    /// The wait before each retry; the last one repeats when `retries` is larger.
    /// Default `["1m", "2m"]`.
    pub retry_delays: Vec<Duration>,
    /// How long finished events stay queryable. Default 72 h.
    pub retention: Duration,
    /// The largest event accepted. Default 128 KiB.
    pub max_event_bytes: u64,
}

/// `async.store`.
#[derive(Debug, Clone, PartialEq)]
pub enum AsyncStore {
    /// `"embedded"`: a SQLite database (WAL mode) in this folder (absolute; default
    /// `data/async` beside the config).
    Embedded { path: PathBuf },
    /// `"redis"`: Redis Streams at this URL, shared by every replica. The URL may carry
    /// a password: never print it.
    Redis { url: Secret },
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            configured: false,
            store: AsyncStore::Embedded {
                path: PathBuf::from("data/async"),
            },
            retries: 2,
            retry_delays: vec![Duration::from_secs(60), Duration::from_secs(120)],
            retention: Duration::from_secs(72 * 3600),
            max_event_bytes: 128 * 1024,
        }
    }
}

/// `[discovery]`: how the host names in static pools' `instances` are followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// How often each name is resolved again. Default 5 s.
    pub interval: Duration,
    /// The one nameserver asked (UDP, and TCP for truncated answers); `None`: the
    /// system's `/etc/resolv.conf` (and `/etc/hosts`).
    pub nameserver: Option<SocketAddr>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            interval: Duration::from_secs(5),
            nameserver: None,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Invocations and HTTP triggers. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Health and metrics. Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Request body limit. Default 6 MiB.
    pub max_body_bytes: u64,
    /// Worker threads. Default: the number of CPUs.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight work. Default 30 s.
    pub shutdown_grace: Duration,
    /// One log line per invocation (method, path, status, outcome, duration). Default
    /// false.
    pub access_log: bool,
    /// Pooled upstream connections idle this long are closed by the gateway before the
    /// instance's own keep-alive timer can race a request on them. Default 4 s: below
    /// the 5 s of Node.js, uvicorn and Apache, the shortest common server defaults.
    /// An extension: not among the keys of the contract's sample.
    pub upstream_idle_timeout: Duration,
    /// A new connection must send its first byte, and a request head must be complete
    /// after its first byte, within this. Default 10 s.
    pub header_read_timeout: Duration,
    /// Client connections (HTTP/1.1 and HTTP/2) with no request for this long are
    /// closed. Default 60 s.
    pub client_idle_timeout: Duration,
    /// Open client connections on `listen`, at most. Default 10,000.
    pub max_connections: u64,
    /// `[server.tls]`: `listen` speaks TLS.
    pub tls: Option<TlsConfig>,
    /// `POST /admin/*` needs `Authorization: Bearer <token>` when set. Default none.
    pub admin_token: Option<Secret>,
}

/// `[images]`: where image functions' images are unpacked and what runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagesConfig {
    /// Unpacked images, by digest. Absolute; default `data/images` beside the config.
    pub store: PathBuf,
    /// The OCI runtime: a name looked up in `PATH`, or a path. Default `runc`.
    pub runtime: String,
    /// The most an image's compressed layers may weigh together. Default 1 GiB.
    pub max_image_bytes: u64,
}

/// `[platform]`: identity stamped into `X-Scf-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformConfig {
    pub region: String,
    pub appid: String,
    pub uin: String,
}

/// `[credentials]`: temporary credentials stamped as `X-Scf-Secret-*`. Each is optional;
/// only those configured are stamped.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub secret_id: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

/// A value that must never be printed: its `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The real value, for the one place that needs it: stamping the header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `type = "event" | "http"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    /// Invoked through `POST /v1/functions/{name}/invocations`; the instance gets
    /// `POST /event-invoke`.
    Event,
    /// A web function, reached through `[[routes]]` with the original request.
    Http,
}

/// One `[[functions]]` entry.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub name: String,
    pub namespace: String,
    pub version: String,
    pub kind: FunctionKind,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub instance_concurrency: u32,
    pub queue_depth: u32,
    pub queue_timeout: Duration,
    pub source: InstanceSource,
    /// `[[functions.timers]]`.
    pub timers: Vec<TimerConfig>,
}

/// One `[[functions.timers]]` entry: a cron schedule whose every tick is one
/// asynchronous invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerConfig {
    pub name: String,
    /// The expression as written (7 or 5 fields, UTC).
    pub cron: String,
    /// `cron`, parsed.
    pub schedule: Schedule,
    /// `message`: carried in the event's `Message`. Default empty.
    pub message: String,
    /// Default true.
    pub enabled: bool,
}

/// Where a function's instances come from. A pool receives instances from a source:
/// a static list, or processes the gateway launches itself.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceSource {
    /// `instances = [...]`: already running somewhere (sidecar mode).
    Static(Vec<StaticInstance>),
    /// `[functions.launch]`: the gateway starts, supervises and stops the instances.
    Launch(LaunchConfig),
}

/// `[functions.launch]`: how to start one instance of a function, and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchConfig {
    /// The program, looked up in `PATH` like a shell would. Empty for an image
    /// function (its override is [`ImageLaunch::command`]).
    pub command: String,
    pub args: Vec<String>,
    /// `image`: the function runs as containers of this image.
    pub image: Option<Box<ImageLaunch>>,
    /// `network`: `Isolated` for images; a process's choice, default `Host`.
    pub network: Network,
    /// The function's own environment, on top of the SCF variables. Values may hold
    /// secrets (`${VAR}`): never print them.
    pub env: Vec<(String, Secret)>,
    /// Absolute; default the config file's directory. Also `USER_CODE_ROOT`.
    pub workdir: PathBuf,
    /// The port instances listen on when the gateway does not pick one: a pinned port
    /// on the host network (then at most one instance), or the port inside each
    /// instance's own namespace (default 9000).
    pub port: Option<u16>,
    /// Kept warm (provisioned concurrency). Default 0.
    pub min_instances: u32,
    /// Default 4; 1 when `port` is pinned.
    pub max_instances: u32,
    /// Default 30 s.
    pub ready_timeout: Duration,
    /// Default 5 min.
    pub idle_timeout: Duration,
}

/// Where a launched instance's network lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's: the instance listens on a port of the host's loopback.
    Host,
    /// Its own network namespace, reached over a link of its own; every instance can
    /// listen on the same port.
    Isolated,
}

/// The image part of an image function's `[functions.launch]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLaunch {
    /// The image, with relative paths already resolved against the config's directory.
    pub reference: crate::image::ImageRef,
    /// `command`: replaces the image's Entrypoint (SCF's Command).
    pub command: Option<String>,
    /// `args`: replaces the image's Cmd (SCF's Args).
    pub args: Option<Vec<String>>,
    /// `tmp_mb`: the size of the writable `/tmp`. Default 512.
    pub tmp_mb: u32,
}

/// One entry of a static pool's `instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticInstance {
    /// An IP address and a port: a member for the pool's life.
    Fixed {
        /// As written in the file (`127.0.0.1:9001`): used for `Host` and logs.
        authority: String,
        addr: SocketAddr,
    },
    /// A host name and a port: stands for every address the name resolves to,
    /// resolved again every [`DiscoveryConfig::interval`] (see `crate::discovery`).
    Named {
        /// As written in the file (`fn-a.default.svc:9000`): used for `Host` and logs.
        authority: String,
        host: String,
        port: u16,
    },
}

impl StaticInstance {
    /// The entry as written in the file.
    pub fn authority(&self) -> &str {
        match self {
            StaticInstance::Fixed { authority, .. } | StaticInstance::Named { authority, .. } => {
                authority
            }
        }
    }
}

/// One `[[routes]]` entry, already resolved to a function.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `None` for `*`, else the exact host, lower-cased, without a port.
    pub host: Option<String>,
    /// Starts with `/`, no trailing `/` unless it is exactly `/`.
    pub path_prefix: String,
    /// Index into [`Config::functions`]; always a `type = "http"` function.
    pub function: usize,
    pub strip_prefix: bool,
}

impl Config {
    /// Reads and validates a file, with `${VAR}` resolved from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                location: Location::None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        parse(&text, path, &|name| std::env::var(name).ok())
    }
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line and column.
    Position { line: usize, col: usize },
    /// A key path such as `functions[1].timeout` (array indices start at 0).
    KeyPath(String),
    /// The file as a whole (it could not be read).
    None,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: Location,
    pub message: String,
}

/// Every problem found in one file. `Display` prints one `error: ...` line per problem,
/// exactly as the contract words it.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match &e.location {
                Location::Position { line, col } => {
                    write!(f, "error: {file}:{line}:{col}: {}", e.message)?
                }
                Location::KeyPath(path) => write!(f, "error: {file}: {path}: {}", e.message)?,
                Location::None => write!(f, "error: {file}: {}", e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
