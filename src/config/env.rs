//! `${VAR}` references: every string value of the file may hold them, and they are
//! resolved before the value is interpreted (so `timeout = "${T}"` works). Problems are
//! worded without the value, which may be a secret.

/// The environment lookup `parse` resolves `${VAR}` through.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Resolves `${VAR}` references. A `$` not followed by `{` is kept as is. Problems are
/// worded without the value itself, which may be a secret.
pub(super) fn expand_env(raw: &str, env: Env<'_>) -> Result<String, Vec<String>> {
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

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests;
