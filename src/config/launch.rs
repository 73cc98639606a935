//! `[functions.launch]`: how the gateway starts a function's instances (a command or an
//! image, arguments, environment, working directory, network, port, instance counts,
//! timeouts), and the check that no two functions pin the same host port.
//!
//! A local image is read here, at load time, down to its manifest and config: a
//! missing layout, another platform or an image over `images.max_image_bytes` is a
//! config error that `check` reports, not a failure at the first cold start.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::env::is_env_name;
use super::walk::{Ctx, Section, Str};
use super::{FunctionConfig, ImageLaunch, ImagesConfig, LaunchConfig, Network, Secret};
use crate::image::{self, ImageRef};

const LAUNCH_KEYS: &[&str] = &[
    "command",
    "args",
    "image",
    "network",
    "tmp_mb",
    "env",
    "workdir",
    "port",
    "min_instances",
    "max_instances",
    "ready_timeout",
    "idle_timeout",
];

/// The port an isolated instance listens on unless `port` says otherwise: SCF fixes 9000.
pub const ISOLATED_PORT: u16 = 9000;
/// Default and bounds of `tmp_mb`.
const DEFAULT_TMP_MB: u32 = 512;
const MAX_TMP_MB: u32 = 65536;

/// Upper bound of `min_instances` and `max_instances`: processes per function.
const MAX_INSTANCES: u32 = 1000;
/// `max_instances` when the gateway picks the ports, and when a port is pinned.
const DEFAULT_MAX_INSTANCES: u32 = 4;
const PINNED_MAX_INSTANCES: u32 = 1;

/// A `launch.port` as read, with where it is written (for the duplicate check).
pub(super) struct PinnedPort {
    port: u16,
    span: Range<usize>,
    /// `functions[1].launch.port`.
    path: String,
}

/// `[functions.launch]` (or `launch = { ... }`).
pub(super) fn read_launch(
    ctx: &mut Ctx<'_>,
    l: &Section<'_, '_>,
    config_dir: &Path,
    images: &ImagesConfig,
) -> (LaunchConfig, Option<PinnedPort>) {
    ctx.check_keys(l, LAUNCH_KEYS);

    let image = read_image(ctx, l, config_dir, images);
    let command = match ctx.get_str(l, "command", "a string") {
        Some(c) if c.value.trim().is_empty() => {
            let path = l.key_path("command");
            ctx.error(c.span, format!("{path}: must not be empty"));
            None
        }
        Some(c) => no_nul(ctx, &l.key_path("command"), c),
        None => {
            if l.get("command").is_none() && l.get("image").is_none() {
                let path = l.key_path("command");
                ctx.error_at_path(
                    path,
                    l.start,
                    "missing required key `command` (or `image` for an image function)",
                );
            }
            None
        }
    };
    let args = read_launch_args(ctx, l);
    let env = read_launch_env(ctx, l);
    let workdir = read_workdir(ctx, l, config_dir);
    if let (Some((key, _)), Some(_)) = (l.get("workdir"), l.get("image")) {
        let path = l.key_path("workdir");
        let message = format!(
            "{path}: an image function runs in its image's WorkingDir; `workdir` is for processes"
        );
        ctx.error(key.span(), message);
    }
    let network = read_network(ctx, l, l.get("image").is_some());
    if network == Network::Isolated {
        require_root(ctx, l, image.is_some());
    }

    let port = ctx
        .get_u32_opt(l, "port", 1..=u32::from(u16::MAX))
        .and_then(|p| u16::try_from(p).ok());
    // Only a port on the host's network is shared: in a namespace of its own every
    // instance has the whole port range.
    let pinned = port.filter(|_| network == Network::Host).and_then(|port| {
        let (_, value) = l.get("port")?;
        Some(PinnedPort {
            port,
            span: value.span(),
            path: l.key_path("port"),
        })
    });
    let (min_instances, max_instances) = read_instance_counts(ctx, l, pinned.is_some());

    let tmp_mb = ctx.get_u32_opt(l, "tmp_mb", 1..=MAX_TMP_MB);
    if let (Some(_), None, Some((key, _))) = (tmp_mb, l.get("image"), l.get("tmp_mb")) {
        let path = l.key_path("tmp_mb");
        ctx.error(
            key.span(),
            format!("{path}: only image functions have a /tmp of their own"),
        );
    }
    let (command, args, image) = match image {
        Some(reference) => {
            let image = ImageLaunch {
                reference,
                command,
                args: l.get("args").map(|_| args),
                tmp_mb: tmp_mb.unwrap_or(DEFAULT_TMP_MB),
            };
            (String::new(), Vec::new(), Some(Box::new(image)))
        }
        None => (command.unwrap_or_default(), args, None),
    };
    let port = match network {
        Network::Host => port,
        Network::Isolated => Some(port.unwrap_or(ISOLATED_PORT)),
    };

    let launch = LaunchConfig {
        command,
        args,
        image,
        network,
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

/// `image = "oci:DIR[:TAG]" | "docker-archive:FILE"`: parsed, resolved against the
/// config's directory and read down to its config, so that every problem of a local
/// image shows at load time. `None` when absent or unusable (reported).
fn read_image(
    ctx: &mut Ctx<'_>,
    l: &Section<'_, '_>,
    config_dir: &Path,
    images: &ImagesConfig,
) -> Option<ImageRef> {
    let value = ctx.get_str(l, "image", "a string")?;
    let path = l.key_path("image");
    let Some(reference) = ImageRef::parse(&value.value) else {
        let message = if value.value.trim().is_empty() {
            format!("{path}: must not be empty")
        } else if value.value.starts_with("oci:") || value.value.starts_with("docker-archive:") {
            format!("{path}: {:?} names no layout or archive", value.value)
        } else {
            format!(
                "{path}: registry images ({:?}) are not supported yet: use \"oci:DIR[:TAG]\" \
                 or \"docker-archive:FILE\"",
                value.value
            )
        };
        ctx.error(value.span, message);
        return None;
    };
    let base = std::path::absolute(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    let reference = match reference {
        ImageRef::Oci { dir, tag } => ImageRef::Oci {
            dir: normalize_path(&base.join(dir)),
            tag,
        },
        ImageRef::DockerArchive { file } => ImageRef::DockerArchive {
            file: normalize_path(&base.join(file)),
        },
    };
    let limits = image::Limits {
        max_image_bytes: images.max_image_bytes,
        ..image::Limits::default()
    };
    if let Err(e) = image::layout::read(&reference, &limits) {
        ctx.error(value.span, format!("{path}: {e}"));
        return None;
    }
    Some(reference)
}

/// `network = "host" | "isolated"`: an image function is always isolated.
fn read_network(ctx: &mut Ctx<'_>, l: &Section<'_, '_>, is_image: bool) -> Network {
    let default = if is_image {
        Network::Isolated
    } else {
        Network::Host
    };
    let Some(value) = ctx.get_str(l, "network", "a string") else {
        return default;
    };
    let path = l.key_path("network");
    match value.value.as_str() {
        "isolated" => Network::Isolated,
        "host" if is_image => {
            let message = format!(
                "{path}: an image function runs in a network namespace of its own; \
                 \"host\" is only for processes (`command`)"
            );
            ctx.error(value.span, message);
            Network::Isolated
        }
        "host" => Network::Host,
        other => {
            let message = format!("{path}: expected \"host\" or \"isolated\", found {other:?}");
            ctx.error(value.span, message);
            default
        }
    }
}

/// Network namespaces, veth links and containers need root.
fn require_root(ctx: &mut Ctx<'_>, l: &Section<'_, '_>, is_image: bool) {
    if rustix::process::geteuid().is_root() {
        return;
    }
    let (key, what) = if is_image {
        ("image", "an image function (containers")
    } else {
        ("network", "an isolated instance (network namespaces")
    };
    let path = l.key_path(key);
    let message = format!(
        "{path}: {what} need root): run the gateway as root, or use a process on the host network"
    );
    match l.get(key) {
        Some((_, value)) => ctx.error(value.span(), message),
        None => ctx.error_at_path(path, l.start, message),
    }
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
pub(super) fn check_duplicate_port(
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

/// The directory relative paths of the file at `path` are relative to.
pub(super) fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes `.` and resolves `..` without touching the file system (symbolic links are
/// not followed). `..` at the root stays at the root.
pub(super) fn normalize_path(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests;
