//! Keys of features the contract describes but the gateway does not have yet. They are
//! refused with a message that says so, instead of being taken for typos (unknown key)
//! or silently ignored; when a feature lands, its key leaves this list.

use super::walk::{Ctx, Section};

/// At the top level: `[async]`.
pub(super) fn top_level(ctx: &mut Ctx<'_>, top: &Section<'_, '_>) {
    refuse(ctx, top, "async", "asynchronous invocations");
}

/// In a `[[functions]]` entry: `timers`.
pub(super) fn function(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) {
    refuse(ctx, s, "timers", "timer triggers");
}

fn refuse(ctx: &mut Ctx<'_>, s: &Section<'_, '_>, key: &str, feature: &str) {
    if let Some((key, _)) = s.get(key) {
        ctx.error(key.span(), format!("{feature} are not supported yet"));
    }
}

#[cfg(test)]
mod tests;
