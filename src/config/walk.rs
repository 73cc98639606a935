//! The walk over the spanned TOML tree, and the list of problems it collects.
//!
//! Why a hand-written walker instead of `#[derive(Deserialize)]`: the contract wants
//! *every* problem reported at once, each with a `file:line:col`, and serde stops at
//! the first error. Walking the spanned tree ourselves also lets us resolve `${VAR}`
//! before a value is interpreted, refuse keys of features that are not built yet with a
//! message that says so, and make sure no message ever carries the value of a secret.
//!
//! [`Ctx`] carries what every step needs (the text for positions, the environment for
//! `${VAR}`, the problems so far); a [`Section`] is one table being read.
//!
//! The walk never stops early: a bad value is reported and replaced by its default so
//! the rest of the file is still checked; [`Ctx::finish`] then returns either the
//! config or all the errors, sorted by where they are in the file.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::env::Env;
use super::{Config, ConfigError, ConfigErrors, Location};

/// Lists of allowed keys longer than this are not spelled out in messages.
const LIST_KEYS_UP_TO: usize = 9;

/// Carries what every step of the walk needs: the text (for positions), the
/// environment (for `${VAR}`) and the problems found so far.
pub(super) struct Ctx<'a> {
    text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    pub(super) env: Env<'a>,
    /// Each problem with the byte offset it sorts by.
    errors: Vec<(usize, ConfigError)>,
}

/// One table being read: `[server]`, one `[[functions]]` entry, the top level...
pub(super) struct Section<'t, 'i> {
    pub(super) table: &'t DeTable<'i>,
    /// Where the table starts in the text; orders errors that have no position.
    pub(super) start: usize,
    /// Key path prefix, e.g. `functions[0]`; empty for the top level.
    pub(super) path: String,
    /// How messages name it, e.g. `[server]`; empty for the top level.
    pub(super) name: &'static str,
}

pub(super) type Entry<'t, 'i> = (
    &'t Spanned<std::borrow::Cow<'i, str>>,
    &'t Spanned<DeValue<'i>>,
);

impl<'t, 'i> Section<'t, 'i> {
    pub(super) fn get(&self, key: &str) -> Option<Entry<'t, 'i>> {
        self.table.get_key_value(key)
    }

    pub(super) fn key_path(&self, key: &str) -> String {
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
pub(super) struct Str {
    pub(super) value: String,
    pub(super) span: Range<usize>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(text: &'a str, env: Env<'a>) -> Self {
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

    /// The text of the file at `span`, as written (before `${VAR}` resolution).
    pub(super) fn source(&self, span: Range<usize>) -> Option<&'a str> {
        self.text.get(span)
    }

    /// A problem at a span of the text.
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
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
    pub(super) fn error_at_path(&mut self, path: String, order: usize, message: impl Into<String>) {
        self.errors.push((
            order,
            ConfigError {
                location: Location::KeyPath(path),
                message: message.into(),
            },
        ));
    }

    pub(super) fn syntax_error(&mut self, e: &toml::de::Error) {
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

    pub(super) fn finish(
        mut self,
        path: &Path,
        config: Option<Config>,
    ) -> Result<Config, ConfigErrors> {
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

    pub(super) fn type_error(&mut self, path: &str, value: &Spanned<DeValue<'_>>, expected: &str) {
        let found = value.get_ref().type_str();
        self.error(
            value.span(),
            format!("{path}: expected {expected}, found {found}"),
        );
    }

    // ---- structure -------------------------------------------------------------------

    /// Reports every key of `section` not in `allowed`.
    pub(super) fn check_keys(&mut self, section: &Section<'_, '_>, allowed: &[&str]) {
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
    pub(super) fn table<'t, 'i>(
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
    pub(super) fn tables<'t, 'i>(
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
mod tests;
