//! A function as the request path sees it: its pool, its prebuilt stamp, its metrics,
//! and the few settings every invocation reads, laid out for that path.
//!
//! Built from the validated config, anew at each reload; shared (`Arc`) by every
//! invocation of the function, so nothing here is per request. A reload that leaves a
//! function's instances as they were hands the new `Function` the old one's pool.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, FunctionConfig, FunctionKind, InstanceSource, EVENT_RESPONSE_LIMIT};
use crate::error::{seconds_text, ForwardError};
use crate::headers::{Stamp, StampValues};
use crate::image::ImageRef;
use crate::instance::Launcher;
use crate::metrics::{FunctionMetrics, Registry};
use crate::pool::{Pool, Upstreams};

/// One function, ready to serve.
///
/// `repr(C)` keeps the declared order: the fields every invocation reads come first,
/// after the `Arc`'s counts, so they share two cache lines; the names (for logs and
/// errors) come last.
#[repr(C)]
pub struct Function {
    pool: Arc<Pool>,
    pub(crate) metrics: FunctionMetrics,
    pub(crate) stamp: Stamp,
    pub(crate) timeout: Duration,
    /// Largest response body passed on (the event-function limit, or none).
    pub(crate) response_limit: u64,
    pub(crate) memory_mb: u32,
    pub kind: FunctionKind,
    pub name: String,
    pub namespace: String,
    timeout_text: String,
    source: Source,
}

/// Where a function's instances come from, as the admin API names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `instances = [...]`.
    Static,
    /// `launch.command`: processes on this host.
    Process,
    /// `launch.image`: containers of this image.
    Image(ImageRef),
}

impl Source {
    /// `"static"`, `"process"` or `"image"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Process => "process",
            Source::Image(_) => "image",
        }
    }
}

impl Function {
    /// `pool`: the pool to keep (a reload that left the function's instances as they
    /// were); `None` makes a new one, which is started by the caller.
    pub(crate) fn new(
        config: &Config,
        f: &FunctionConfig,
        registry: &Registry,
        upstreams: &Upstreams,
        stamps: &mut StampValues,
        pool: Option<Arc<Pool>>,
    ) -> Function {
        let metrics = registry.function(&f.name, &f.namespace);
        let pool = pool.unwrap_or_else(|| {
            let launcher = match &f.source {
                InstanceSource::Launch(launch) => Some(Arc::new(Launcher::new(config, f, launch))),
                InstanceSource::Static(_) => None,
            };
            Pool::new(
                f,
                config.server.upstream_idle_timeout,
                metrics.clone(),
                launcher,
                upstreams,
            )
        });
        let source = match &f.source {
            InstanceSource::Static(_) => Source::Static,
            InstanceSource::Launch(l) => match &l.image {
                Some(image) => Source::Image(image.reference.clone()),
                None => Source::Process,
            },
        };
        Function {
            source,
            memory_mb: f.memory_mb,
            name: f.name.clone(),
            namespace: f.namespace.clone(),
            kind: f.kind,
            timeout: f.timeout,
            timeout_text: seconds_text(f.timeout),
            response_limit: match f.kind {
                FunctionKind::Event => EVENT_RESPONSE_LIMIT,
                FunctionKind::Http => u64::MAX,
            },
            stamp: Stamp::shared(config, f, stamps),
            pool,
            metrics,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn metrics(&self) -> &FunctionMetrics {
        &self.metrics
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn memory_mb(&self) -> u32 {
        self.memory_mb
    }

    /// `timeout`: the execution time limit of one invocation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The 433 this function's invocations end with when they run past `timeout`.
    pub fn timeout_error(&self) -> ForwardError {
        ForwardError::Timeout {
            seconds: self.timeout_text.clone(),
        }
    }
}
