//! The Tencent Cloud API 3.0 endpoint: `POST /` with `X-TC-Action`, as the official
//! Tencent Cloud SDKs call it, so that they work unchanged with their endpoint set to the
//! gateway.

pub mod signature;
