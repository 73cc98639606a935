//! `[[functions.timers]]`: a function's timer triggers. Each has a name (unique within
//! its function), an SCF cron expression parsed here, so that a bad one is a config
//! error pointing into the string, and the message its events carry. Only event
//! functions take timers: a tick invokes its function asynchronously with a timer event,
//! and a web function (`type = "http"`) is served HTTP requests, not events.

use std::collections::HashMap;
use std::ops::Range;

use super::functions::check_name;
use super::walk::{Ctx, Section};
use super::{FunctionKind, TimerConfig};
use crate::asynchronous::cron::{CronError, Schedule};

const TIMER_KEYS: &[&str] = &["name", "cron", "message", "enabled"];

/// Reads a function's `timers`; `kind` is its type when valid (a web function's timers
/// are refused).
pub(super) fn read_timers(
    ctx: &mut Ctx<'_>,
    function: &Section<'_, '_>,
    kind: Option<FunctionKind>,
) -> Vec<TimerConfig> {
    let sections = ctx.tables(function, "timers", "[[functions.timers]]");
    if kind == Some(FunctionKind::Http) {
        if let Some((key, _)) = function.get("timers") {
            let message = format!(
                "{}: a web function (type = \"http\") cannot have timers: a timer invokes \
                 its function with an event, and a web function is served HTTP requests",
                function.key_path("timers")
            );
            ctx.error(key.span(), message);
        }
    }
    // Names so far, with their index.
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut timers = Vec::with_capacity(sections.len());
    for (index, s) in sections.iter().enumerate() {
        if let Some(timer) = read_timer(ctx, s, index, &mut names) {
            timers.push(timer);
        }
    }
    timers
}

/// One timer; `None` when a required key is missing or unusable (reported).
fn read_timer(
    ctx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    index: usize,
    names: &mut HashMap<String, usize>,
) -> Option<TimerConfig> {
    ctx.check_keys(s, TIMER_KEYS);
    let name = match ctx.get_str(s, "name", "a string") {
        Some(name) => match check_name(&name.value) {
            Ok(()) => {
                if let Some(first) = names.get(&name.value) {
                    let message = format!(
                        "{}: duplicate timer {:?}: already defined by timers[{first}] of \
                         this function",
                        s.key_path("name"),
                        name.value
                    );
                    ctx.error(name.span, message);
                } else {
                    names.insert(name.value.clone(), index);
                }
                Some(name.value)
            }
            Err(why) => {
                let message = format!(
                    "{}: invalid timer name {:?}: {why}",
                    s.key_path("name"),
                    name.value
                );
                ctx.error(name.span, message);
                None
            }
        },
        None => {
            if s.get("name").is_none() {
                ctx.error_at_path(s.key_path("name"), s.start, "missing required key `name`");
            }
            None
        }
    };
    let cron = match ctx.get_str(s, "cron", "a string such as \"0 */5 * * * * *\"") {
        Some(cron) => match Schedule::parse(&cron.value) {
            Ok(schedule) => Some((cron.value, schedule)),
            Err(e) => {
                let span = error_span(ctx, &cron.value, &cron.span, &e);
                ctx.error(span, format!("{}: {}", s.key_path("cron"), e.message));
                None
            }
        },
        None => {
            if s.get("cron").is_none() {
                ctx.error_at_path(s.key_path("cron"), s.start, "missing required key `cron`");
            }
            None
        }
    };
    let message = ctx
        .get_str(s, "message", "a string")
        .map(|m| m.value)
        .unwrap_or_default();
    let enabled = ctx.get_bool(s, "enabled", true);
    let (name, (cron, schedule)) = (name?, cron?);
    Some(TimerConfig {
        name,
        cron,
        schedule,
        message,
        enabled,
    })
}

/// Where in the file a cron error is: inside the string when the text between its
/// quotes is the expression itself (no escape, no `${VAR}`), else the whole value.
fn error_span(ctx: &Ctx<'_>, expr: &str, value: &Range<usize>, e: &CronError) -> Range<usize> {
    let written = ctx.source(value.clone()).unwrap_or_default();
    let inner = written
        .strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .or_else(|| {
            written
                .strip_prefix('\'')
                .and_then(|w| w.strip_suffix('\''))
        });
    match inner {
        // An empty span (a missing value) still points at where it is missing.
        Some(inner) if inner == expr && e.field.is_some() => {
            let start = value.start + 1 + e.span.start;
            start..(value.start + 1 + e.span.end).max(start + 1)
        }
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests;
