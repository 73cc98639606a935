//! Turns the text of a config file into a [`Config`], or into the complete list of what
//! is wrong with it: the top level of the walk, which reads each section in turn (see
//! [`walk`](super::walk) for why the walk is hand-written).

use std::collections::HashMap;
use std::path::Path;

use toml::de::DeTable;

use super::api::read_api;
use super::asynchronous::read_async;
use super::discovery::read_discovery;
use super::env::Env;
use super::functions::{check_duplicate_function, read_function, Ident};
use super::images::read_images;
use super::launch::{check_duplicate_port, config_dir};
use super::platform::{read_credentials, read_platform};
use super::routes::read_route;
use super::server::read_server;
use super::walk::{Ctx, Section};
use super::{Config, ConfigErrors, FunctionConfig};

const TOP_KEYS: &[&str] = &[
    "server",
    "platform",
    "credentials",
    "images",
    "functions",
    "routes",
    "async",
    "discovery",
    "api",
];

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

fn read_config(ctx: &mut Ctx<'_>, root: &DeTable<'_>, path: &Path) -> Config {
    let top = Section {
        table: root,
        start: 0,
        path: String::new(),
        name: "",
    };
    ctx.check_keys(&top, TOP_KEYS);

    let empty = DeTable::new();
    let config_dir = config_dir(path);
    let server = ctx.table(&top, "server", "[server]");
    let server = read_server(ctx, &or_empty(server, &empty, "[server]"), &config_dir);
    let platform = ctx.table(&top, "platform", "[platform]");
    let platform = read_platform(ctx, &or_empty(platform, &empty, "[platform]"));
    let credentials = ctx.table(&top, "credentials", "[credentials]");
    let credentials = read_credentials(ctx, &or_empty(credentials, &empty, "[credentials]"));

    let discovery = ctx.table(&top, "discovery", "[discovery]");
    let discovery = read_discovery(ctx, &or_empty(discovery, &empty, "[discovery]"));

    let section = ctx.table(&top, "async", "[async]");
    let present = section.is_some();
    let asynchronous = read_async(
        ctx,
        &or_empty(section, &empty, "[async]"),
        present,
        &config_dir,
    );

    let api = ctx.table(&top, "api", "[api]");
    let api = read_api(ctx, &or_empty(api, &empty, "[api]"));

    let images = ctx.table(&top, "images", "[images]");
    let images = read_images(ctx, &or_empty(images, &empty, "[images]"), &config_dir);
    let mut functions: Vec<FunctionConfig> = Vec::new();
    let mut idents: Vec<Ident> = Vec::new();
    // Pinned launch ports so far, with the index of the function that pins each.
    let mut pinned_ports: HashMap<u16, usize> = HashMap::new();
    for (index, section) in ctx
        .tables(&top, "functions", "[[functions]]")
        .iter()
        .enumerate()
    {
        let (function, ident, pinned) = read_function(ctx, section, index, &config_dir, &images);
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
        images,
        functions,
        routes,
        discovery,
        asynchronous,
        api,
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

#[cfg(test)]
mod tests;
