//! `[platform]` and `[credentials]`: the identity and the temporary credentials stamped
//! into every request's `X-Scf-*` headers. Credentials are secrets: no message and no
//! `Debug` output shows one.

use super::walk::{Ctx, Section};
use super::{Credentials, PlatformConfig};

const PLATFORM_KEYS: &[&str] = &["region", "appid", "uin"];
const CREDENTIAL_KEYS: &[&str] = &["secret_id", "secret_key", "session_token"];

pub(super) fn read_platform(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> PlatformConfig {
    ctx.check_keys(s, PLATFORM_KEYS);
    PlatformConfig {
        region: ctx.get_token(s, "region", "ap-guangzhou"),
        appid: ctx.get_token(s, "appid", "1250000000"),
        uin: ctx.get_token(s, "uin", "100000000001"),
    }
}

pub(super) fn read_credentials(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Credentials {
    ctx.check_keys(s, CREDENTIAL_KEYS);
    Credentials {
        secret_id: ctx.get_secret(s, "secret_id"),
        secret_key: ctx.get_secret(s, "secret_key"),
        session_token: ctx.get_secret(s, "session_token"),
    }
}

#[cfg(test)]
mod tests;
