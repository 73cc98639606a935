//! What the config tests share: parsing a text as `gateway.toml` and looking at its
//! errors by position.

use std::collections::HashMap;
use std::path::Path;

use super::{
    parse, Config, ConfigError, ConfigErrors, FunctionConfig, InstanceSource, Location,
    StaticInstance,
};

pub(super) const FILE: &str = "gateway.toml";

pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(text, Path::new(FILE), &|name| vars.get(name).cloned())
}

pub(super) fn ok(text: &str) -> Config {
    match parse(text, Path::new(FILE), &no_env) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

pub(super) fn errors(text: &str) -> Vec<ConfigError> {
    errors_with(text, &[])
}

pub(super) fn errors_with(text: &str, vars: &[(&str, &str)]) -> Vec<ConfigError> {
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
pub(super) fn one_error(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

pub(super) fn at(line: usize, col: usize) -> Location {
    Location::Position { line, col }
}

pub(super) fn path(p: &str) -> Location {
    Location::KeyPath(p.to_string())
}

pub(super) const FUNCTION: &str =
    "[[functions]]\nname = \"hello\"\ninstances = [\"127.0.0.1:9001\"]\n";

pub(super) fn static_instances(f: &FunctionConfig) -> &[StaticInstance] {
    match &f.source {
        InstanceSource::Static(instances) => instances,
        InstanceSource::Launch(_) => panic!("expected a static pool"),
    }
}
