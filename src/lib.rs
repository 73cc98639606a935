//! scf-gateway: an invocation gateway for SCF-style image functions.
//!
//! A request crosses these modules in order (the path itself is written out in
//! [`invoke`]):
//!
//! | stage | module |
//! |---|---|
//! | accept (HTTP/1.1, h2c), client limits, graceful shutdown | [`server`] |
//! | route to a function | [`routing`] |
//! | admit: request framing, body limit, small bodies read whole | [`invoke`], [`body`] |
//! | strip and stamp `X-Scf-*` | [`headers`] |
//! | queue, slots, balancing, warm connections | [`pool`] |
//! | forward (HTTP/1.1 to the instance), deadline, stream the response | [`invoke`], [`upstream::h1`], [`body`] |
//! | map failures to the contract's errors | [`error`] |
//! | record | [`metrics`], [`admin`] |
//!
//! [`api`] is for the Tencent Cloud API 3.0 endpoint (`POST /` with `X-TC-Action`): it
//! verifies the calls' signatures; no request reaches it yet.
//!
//! [`config`] turns the TOML file into the validated data all of this runs on.
//! [`image`] reads container images from disk and unpacks them into the image store;
//! no configuration reaches it yet.
//!
//! `unsafe` is confined to [`sys`], the one module that talks to the kernel directly.

#![deny(unsafe_code)]

pub mod admin;
pub mod api;
pub mod asynchronous;
pub mod body;
pub mod config;
pub mod discovery;
pub mod error;
pub mod function;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod image;
pub mod instance;
pub mod invocation;
pub mod invoke;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod routing;
pub mod server;
#[allow(unsafe_code)]
pub mod sys;
pub mod upstream;
pub mod worker;

pub use config::Config;
pub use server::{run, RunningGateway};
