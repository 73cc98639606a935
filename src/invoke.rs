//! The request path, stage by stage, in one place:
//!
//! ```text
//! accept (server) -> route -> admit (body limit) -> stamp -> read a small body whole
//!   -> queue/pick instance -> forward (deadline starts) -> respond (stream)
//!   -> record (when the body ends)
//! ```
//!
//! Each stage raises its own error type; they meet here as [`GatewayError`], which is
//! rendered in one place (`error.rs`). Only a small request body is held in memory
//! (before an instance is chosen, so a slow client holds no slot); larger bodies and
//! every response stream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::asynchronous::store::Claimed;
use crate::asynchronous::{FunctionKey, NewEvent, Service, StoreError, Trigger};
use crate::body::{
    self, GatewayBody, InvocationBody, LimitedBody, Reservation, ResponseBody, UpstreamBody,
};
use crate::config::{Config, FunctionKind, EVENT_RESPONSE_LIMIT};
use crate::error::{
    seconds_text, AsyncError, BadRequest, BodyTooLarge, ClientBodyError, ForwardError,
    GatewayError, MAX_TARGET,
};
use crate::function::Function;
use crate::headers::{self, Scheme, StampValues, Stripped};
use crate::instance::logs;
use crate::invocation::{AccessLog, Invocation, Measured};
use crate::metrics::{Outcome, Registry};
use crate::pool::{Instance, Pool, PooledConn, Slot, Upstreams};
use crate::routing::{Router, Target};
use crate::upstream::h1::{self, UpstreamError};

type SendError = h1::SendError<UpstreamBody>;

/// How long a broken connection waits for a launched instance's exit status.
const EXIT_GRACE: Duration = Duration::from_millis(250);
const LOG_RESULT: http::HeaderName = http::HeaderName::from_static("x-scf-log-result");

/// Where event invocations go on an instance.
const EVENT_INVOKE: &str = "/event-invoke";
/// How long a refused body may take to drain before the answer is sent anyway.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The gateway's request handling state for one config, shared by every connection.
/// A reload builds the next one and swaps it in (see [`crate::reload`]); a request
/// keeps the one it started with.
pub struct Gateway {
    router: Router,
    functions: Box<[Arc<Function>]>,
    max_body_bytes: u64,
    access_log: bool,
    /// The longest wait for a small body read before an instance is chosen, whatever
    /// the function's timeout: `server.header_read_timeout`, the time a client has for
    /// the request head.
    body_wait: Duration,
    registry: Registry,
    /// `/event-invoke`, parsed once (`Uri::from_static` parses on every call).
    event_uri: Uri,
    /// The config it was built from: what the next reload compares with.
    config: Arc<Config>,
    /// Static instances at the same address share their keep-alive connections, across
    /// functions and across reloads.
    upstreams: Upstreams,
    /// Asynchronous invocations: where `Event` invocations are kept and what runs
    /// them. Shared by every snapshot of a running gateway; `None` in a gateway built
    /// without one (tests, benchmarks), which answers `Event` with 503.
    events: Option<Arc<Service>>,
    /// Dropped with the gateway, which tells a reload that no request still runs on it.
    _in_use: oneshot::Sender<()>,
}

/// A gateway built for a config, with what changed from the one before it.
pub struct Built {
    pub gateway: Gateway,
    /// Resolves (with an error) once the gateway is dropped.
    pub unused: oneshot::Receiver<()>,
    /// Pools made for this config: started by the caller before the gateway serves.
    pub new_pools: Vec<Arc<Pool>>,
    /// The previous gateway's pools this one does not keep: drained, then closed.
    pub retired_pools: Vec<Arc<Pool>>,
}

impl Gateway {
    /// Builds the gateway from a validated config. Pools are not started yet.
    pub fn new(config: &Config) -> Gateway {
        Gateway::build(Arc::new(config.clone()), None).gateway
    }

    /// Builds the gateway for `config`. With the `previous` gateway, every function
    /// whose instances stay as they were (see [`crate::reload::keeps_instances`]) keeps
    /// its pool, and so its instances and warm connections; the metrics carry on.
    pub fn build(config: Arc<Config>, previous: Option<&Gateway>) -> Built {
        let registry = previous.map_or_else(Registry::new, |p| p.registry.clone());
        // Static instances at the same address share their keep-alive connections,
        // across functions and reloads; new `[discovery]` settings need new ones.
        let upstreams = match previous {
            Some(p) if p.config.discovery == config.discovery => p.upstreams.clone(),
            _ => Upstreams::new(&config.discovery),
        };
        // Equal stamp values are built once and shared by every function.
        let mut stamps = StampValues::default();
        let mut kept = vec![false; previous.map_or(0, |p| p.functions.len())];
        let mut new_pools = Vec::new();
        let functions = config
            .functions
            .iter()
            .map(|f| {
                let reused = previous.and_then(|p| {
                    let i = p.config.functions.iter().position(|old| {
                        crate::reload::keeps_instances(&p.config, old, &config, f)
                    })?;
                    kept[i] = true;
                    Some(p.functions[i].pool().clone())
                });
                let fresh = reused.is_none();
                let function =
                    Function::new(&config, f, &registry, &upstreams, &mut stamps, reused);
                if fresh {
                    new_pools.push(function.pool().clone());
                }
                Arc::new(function)
            })
            .collect();
        let retired_pools = previous.map_or_else(Vec::new, |p| {
            p.functions
                .iter()
                .zip(&kept)
                .filter(|(_, kept)| !**kept)
                .map(|(f, _)| f.pool().clone())
                .collect()
        });
        let (in_use, unused) = oneshot::channel();
        let gateway = Gateway {
            router: Router::new(&config),
            functions,
            max_body_bytes: config.server.max_body_bytes,
            access_log: config.server.access_log,
            body_wait: config.server.header_read_timeout,
            registry,
            event_uri: Uri::from_static(EVENT_INVOKE),
            upstreams,
            config,
            events: previous.and_then(|p| p.events.clone()),
            _in_use: in_use,
        };
        Built {
            gateway,
            unused,
            new_pools,
            retired_pools,
        }
    }

    /// Gives the gateway its asynchronous side (before it serves).
    pub fn set_events(&mut self, events: Arc<Service>) {
        self.events = Some(events);
    }

    /// The asynchronous side, if the gateway has one.
    pub fn events(&self) -> Option<&Arc<Service>> {
        self.events.as_ref()
    }

    /// The function `namespace/name`.
    pub fn function(&self, key: &FunctionKey) -> Option<&Arc<Function>> {
        self.functions
            .iter()
            .find(|f| f.name == key.name && f.namespace == key.namespace)
    }

    /// The config this gateway serves.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn functions(&self) -> &[Arc<Function>] {
        &self.functions
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves one request from `client`, which came over `scheme`. Never fails: errors
    /// become the contract's error responses, each with its `X-Scf-Request-Id`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
        scheme: Scheme,
    ) -> Response<GatewayBody> {
        let request_id = headers::new_request_id();

        // Route.
        let host = match request_host(&req).and_then(|host| check_framing(&req).map(|()| host)) {
            Ok(host) => host,
            Err(e) => return bad_request(e, req.version(), &request_id),
        };
        let routed = self
            .router
            .route(req.method(), req.uri().path(), req.uri().query(), host);
        // `POST /` is an API call only with `X-TC-Action`; without it, a web request.
        let routed = match routed {
            Ok(Target::Api) if !req.headers().contains_key(crate::api::ACTION) => {
                self.router.web(req.uri().path(), host)
            }
            routed => routed,
        };
        let target = match routed {
            Ok(target) => target,
            Err(e) => {
                let e = GatewayError::from(e);
                self.registry.unmatched(e.recent(&request_id));
                return error_response(e, &request_id);
            }
        };
        let function = match target {
            Target::Invoke { function } | Target::Web { function, .. } => &self.functions[function],
            Target::Query => return Box::pin(self.query(req, request_id)).await,
            Target::Api => return Box::pin(crate::api::handle(&self, req)).await,
        };
        let access = self.access_log.then(|| AccessLog {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
        });

        // Admit and stamp.
        let Prepared {
            mut upstream,
            wants_tail,
            event,
        } = match self.prepare(req, target, client, scheme) {
            Ok(prepared) => prepared,
            Err(refused) => {
                let invocation = Invocation::begin(function.clone(), &request_id, access);
                let e = Box::pin(refused.drain()).await;
                invocation.fail(&e);
                return error_response(e, &request_id);
            }
        };

        // An asynchronous invocation is kept, not forwarded: rare here, so boxed.
        if event {
            return Box::pin(self.accept_event(function, upstream, request_id)).await;
        }

        // Read a small body whole, so that a slow client holds no instance. What fails
        // here is the client's alone: not yet an invocation.
        if !upstream.body().is_end_stream() {
            if let Err(e) =
                read_small_body(upstream.body_mut(), function.timeout.min(self.body_wait)).await
            {
                return error_response(e.into(), &request_id);
            }
        }
        let mut invocation = Invocation::begin(function.clone(), &request_id, access);

        // Queue, pick an instance, forward.
        let exchange = match self
            .forward(
                function,
                upstream,
                &request_id,
                &mut invocation,
                Admission::Queue,
            )
            .await
        {
            Ok(exchange) => exchange,
            Err(e) => {
                invocation.fail(&e);
                return error_response(e, &request_id);
            }
        };

        // Respond; the invocation ends with the response body.
        match respond(function, exchange, invocation, wants_tail, request_id) {
            Responded::Now(response) => response,
            Responded::Held(held) => held.await,
        }
    }

    /// Admit and stamp: the request as the instance will see it. Synchronous, so the
    /// client's request is gone from the invocation's future before its first await.
    fn prepare(
        &self,
        req: Request<Incoming>,
        target: Target,
        client: SocketAddr,
        scheme: Scheme,
    ) -> Result<Prepared, TooLarge> {
        let (parts, body) = req.into_parts();

        // Admit: a body announced too large is refused before any instance is touched.
        // hyper's body knows the announced `Content-Length` (no second header lookup).
        if let Some(len) = body.size_hint().exact() {
            if len > self.max_body_bytes {
                // With `Expect: 100-continue` the client has not sent the body yet and
                // will not; otherwise it is read away so the client can read the answer.
                let expects_continue = parts
                    .headers
                    .get(EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                return Err(TooLarge {
                    limit: self.max_body_bytes,
                    unread: (!expects_continue).then_some(body),
                });
            }
        }

        // Stamp: events get the instance as `Host` once one is picked; web requests
        // keep the host they were routed by (read before stripping: `Connection` may
        // name `Host`), which is the URI's when it has one (see `request_host`).
        let original_host = match target {
            Target::Invoke { .. } | Target::Query | Target::Api => None,
            Target::Web { .. } => match parts.uri.authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => parts.headers.get(HOST).cloned(),
            },
        };
        // The stamp itself is written straight into the request head (see `h1::send`).
        // Room for what is added: events only replace `Host`; web requests add up to
        // four (a map at capacity would otherwise be rehashed for them).
        let room = match target {
            Target::Invoke { .. } | Target::Query | Target::Api => 0,
            Target::Web { .. } => 4,
        };
        let Stripped {
            mut headers,
            log_tail,
            event,
        } = headers::strip_request(parts.headers, room);
        if parts.version == Version::HTTP_2 {
            headers::join_cookies(&mut headers);
        }
        let (method, uri) = match target {
            Target::Invoke { .. } | Target::Query | Target::Api => {
                (Method::POST, self.event_uri.clone())
            }
            Target::Web { strip, .. } => {
                if let Some(host) = &original_host {
                    headers.insert(HOST, host.clone());
                }
                headers::add_forwarded(&mut headers, client.ip(), original_host.as_ref(), scheme);
                (parts.method, web_uri(&parts.uri, strip))
            }
        };
        let mut upstream = Request::new(LimitedBody::client(body, self.max_body_bytes));
        *upstream.method_mut() = method;
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers;
        Ok(Prepared {
            upstream,
            wants_tail: log_tail,
            // Only the invocation API has asynchronous invocations; a web request's
            // header is stripped like any other.
            event: event && matches!(target, Target::Invoke { .. }),
        })
    }

    /// Queue, pick and forward: everything up to the response head. The invocation
    /// is handed to the instance on the way; on failure it is still on it (the caller
    /// ends it), so its time there is billed and logged.
    async fn forward(
        &self,
        function: &Function,
        mut upstream: Request<UpstreamBody>,
        request_id: &HeaderValue,
        invocation: &mut Invocation,
        admission: Admission,
    ) -> Result<Exchange, GatewayError> {
        let stamp = &function.stamp.lines(request_id);
        let pool = function.pool();
        // Counted down from the pool's limit once an instance has refused: the first
        // attempt nearly always succeeds, so the limit is not read (under the pool's
        // lock) before it is needed.
        let mut attempts: Option<usize> = None;
        let (spare, mut given) = match admission {
            Admission::Queue => (false, None),
            Admission::Spare(slot) => (true, Some(slot)),
        };
        loop {
            let slot = match given.take() {
                Some(slot) => slot,
                // An asynchronous event that must move on after a refusal takes another
                // spare slot, never a place in the queue.
                None if spare => Box::pin(pool.acquire_spare()).await?,
                None => pool.acquire().await?,
            };
            // An instance that refuses the connection got nothing, so the invocation
            // moves on to another one.
            let (conn, handed_over) = match connection(slot.instance(), pool).await {
                Some(ready) => ready,
                None => {
                    pool.mark_down(slot.index(), slot.instance());
                    if out_of_attempts(&mut attempts, pool) {
                        return Err(refused(slot.instance()));
                    }
                    continue;
                }
            };

            // Hand-over: the timeout runs from here to the end of the response body.
            let deadline = handed_over + function.timeout;
            let index = slot.index();
            let instance = invocation.hand_over(slot, handed_over);
            if function.kind == FunctionKind::Event {
                upstream.headers_mut().insert(HOST, instance.host().clone());
            }
            let sending = h1::send(conn, upstream, stamp);
            let sent = match Exchanging::new(sending, deadline, invocation, function).await {
                Ok(Ok(response)) => Ok(Ok(response)),
                Ok(Err(SendError::Failed(e))) => Ok(Err(Failure::Failed(e))),
                // A pooled connection found closed before any byte was written: one
                // fresh connection gets the request (once a byte went out, it is never
                // sent again), under the same guard. Rare, so boxed: the hot future
                // stays small.
                Ok(Err(SendError::Unsent(req))) => {
                    Box::pin(send_fresh(req, stamp, deadline, invocation, function)).await
                }
                Err(past) => Err(past),
            };
            // Handed over above: the attempt is the invocation's until `abandon_attempt`.
            let Some(instance) = invocation.instance() else {
                return Err(function.timeout_error().into());
            };
            match sent {
                Ok(Ok(response)) => return Ok(Exchange { response, deadline }),
                Ok(Err(Failure::Refused(req))) => {
                    pool.mark_down(index, instance);
                    if out_of_attempts(&mut attempts, pool) {
                        return Err(refused(instance));
                    }
                    invocation.abandon_attempt();
                    upstream = req;
                }
                Ok(Err(Failure::Failed(e))) => {
                    return Err(Box::pin(failed(instance, function, e)).await)
                }
                Err(PastDeadline) => return Err(function.timeout_error().into()),
            }
        }
    }
}

// === Asynchronous invocations ===

impl Gateway {
    /// The query API of asynchronous invocations. The request's body, if any, is
    /// not read: the answer closes an HTTP/1.1 connection that still has one.
    async fn query(
        &self,
        req: Request<Incoming>,
        request_id: HeaderValue,
    ) -> Response<GatewayBody> {
        match crate::asynchronous::api::handle(self, &req, &request_id).await {
            Ok(response) => response.map(GatewayBody::full),
            Err(e) => error_response(e, &request_id),
        }
    }

    /// Accept: the event is read whole (at most `async.max_event_bytes`) and kept
    /// durably by the store; only then is the answer 202 with its request id.
    async fn accept_event(
        &self,
        function: &Arc<Function>,
        upstream: Request<UpstreamBody>,
        request_id: HeaderValue,
    ) -> Response<GatewayBody> {
        match self.keep_event(function, upstream, &request_id).await {
            Ok(()) => {
                let id = request_id.to_str().unwrap_or_default();
                let body = serde_json::json!({ "requestId": id }).to_string();
                let mut response = Response::new(GatewayBody::full(body.into()));
                *response.status_mut() = http::StatusCode::ACCEPTED;
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(headers::REQUEST_ID, request_id);
                response
            }
            Err(e) => {
                function.metrics().error(e.recent(&request_id));
                error_response(e, &request_id)
            }
        }
    }

    async fn keep_event(
        &self,
        function: &Function,
        upstream: Request<UpstreamBody>,
        request_id: &HeaderValue,
    ) -> Result<(), GatewayError> {
        let Some(events) = &self.events else {
            return Err(AsyncError::Store(StoreError::Unavailable(
                "this gateway has no asynchronous event store".into(),
            ))
            .into());
        };
        let limit = events.max_event_bytes();
        let (parts, body) = upstream.into_parts();
        if body.size_hint().exact().is_some_and(|len| len > limit) {
            return Err(AsyncError::EventTooLarge { limit }.into());
        }
        let read = tokio::time::timeout(self.body_wait, read_event(body, limit));
        let data = match read.await {
            Ok(read) => read?,
            Err(_) => {
                return Err(ClientBodyError::TooSlow {
                    seconds: seconds_text(self.body_wait),
                }
                .into())
            }
        };
        let id = request_id
            .to_str()
            .ok()
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .unwrap_or_else(headers::new_uuid);
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let event = NewEvent {
            id,
            function: FunctionKey::new(function.namespace.clone(), function.name.clone()),
            qualifier: self.qualifier_of(function),
            body: data,
            content_type,
            trigger: Trigger::Invoke,
            enqueued_at: std::time::SystemTime::now(),
        };
        events.submit(event).await.map_err(AsyncError::from)?;
        Ok(())
    }

    /// The version events of `function` run as.
    fn qualifier_of(&self, function: &Function) -> String {
        self.config
            .functions
            .iter()
            .find(|f| f.name == function.name && f.namespace == function.namespace)
            .map_or_else(|| "$LATEST".to_owned(), |f| f.version.clone())
    }

    /// Runs one attempt of an asynchronous event on `slot`, through the life cycle of
    /// a synchronous invocation (stamping with the event's request id, the timeout,
    /// logs, metrics); the response is read whole (at most 6 MB) to be kept.
    pub async fn run_event(
        &self,
        function: &Arc<Function>,
        slot: Slot,
        event: &Claimed,
    ) -> EventOutcome {
        let request_id = headers::request_id_value(event.id);
        let mut upstream = Request::new(LimitedBody::stored(event.body.clone()));
        *upstream.method_mut() = Method::POST;
        *upstream.uri_mut() = self.event_uri.clone();
        *upstream.version_mut() = Version::HTTP_11;
        let headers = upstream.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(event.body.len()));
        if let Some(value) = event
            .content_type
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            headers.insert(http::header::CONTENT_TYPE, value);
        }
        if event.trigger == Trigger::Timer {
            headers.insert(headers::TRIGGER_SRC, HeaderValue::from_static("timer"));
        }
        let access = self.access_log.then(|| AccessLog {
            method: Method::POST,
            path: EVENT_INVOKE.to_owned(),
        });
        let mut invocation = Invocation::begin(function.clone(), &request_id, access);
        let exchange = match self
            .forward(
                function,
                upstream,
                &request_id,
                &mut invocation,
                Admission::Spare(slot),
            )
            .await
        {
            Ok(exchange) => exchange,
            Err(e) => {
                invocation.fail(&e);
                return EventOutcome::error(e, &request_id);
            }
        };
        let limit = function.response_limit.min(EVENT_RESPONSE_LIMIT);
        let announced = exchange.response.body().size_hint().exact();
        if announced.is_some_and(|len| len > limit) {
            let e = GatewayError::from(ForwardError::ResponseTooLarge);
            invocation.fail(&e);
            return EventOutcome::error(e, &request_id);
        }
        let (parts, incoming) = exchange.response.into_parts();
        invocation.responded(parts.status);
        let instance = invocation
            .instance()
            .map(|i| i.name().to_owned())
            .unwrap_or_default();
        let body = InvocationBody::new(incoming, exchange.deadline, limit, invocation);
        use http_body_util::BodyExt;
        match GatewayBody::invocation(body).collect().await {
            Ok(collected) => EventOutcome::Answered {
                status: parts.status.as_u16(),
                body: collected.to_bytes(),
            },
            Err(e) => {
                let error = match e.downcast::<ForwardError>() {
                    Ok(e) => GatewayError::from(*e),
                    Err(e) => GatewayError::from(ForwardError::InstanceFailed {
                        instance,
                        what: format!("failed while sending the response: {e}"),
                    }),
                };
                EventOutcome::error(error, &request_id)
            }
        }
    }
}

// === Invocations for the cloud API ===

/// A synchronous invocation made with an event already in memory, ended: what the
/// cloud API's `Result` is made of.
#[derive(Debug)]
pub enum Invoked {
    /// The function answered, with this status and body; `measured` as its end
    /// measured it.
    Answered {
        status: http::StatusCode,
        body: bytes::Bytes,
        request_id: HeaderValue,
        measured: Measured,
    },
    /// The gateway failed the invocation (a timeout, a crash, no slot...); `measured`
    /// as its end measured it (nothing when it never reached an instance).
    Failed {
        error: GatewayError,
        request_id: HeaderValue,
        measured: Measured,
    },
}

impl Gateway {
    /// Invokes `function` synchronously with `event`, through the life cycle of
    /// `POST /v1/functions/{name}/invocations` (stamping, the queue, the timeout, logs,
    /// billing, metrics), and reads the answer whole (at most 6 MB).
    pub async fn invoke_event(
        &self,
        function: &Arc<Function>,
        event: bytes::Bytes,
        content_type: Option<HeaderValue>,
    ) -> Invoked {
        let request_id = headers::new_request_id();
        let upstream = self.event_request(event, content_type);
        let access = self.access_log.then(|| AccessLog {
            method: Method::POST,
            path: "/".to_owned(),
        });
        let mut invocation = Invocation::begin(function.clone(), &request_id, access);
        let measured = invocation.measure();
        let exchange = match self
            .forward(
                function,
                upstream,
                &request_id,
                &mut invocation,
                Admission::Queue,
            )
            .await
        {
            Ok(exchange) => exchange,
            Err(e) => {
                invocation.fail(&e);
                return invocation_failed(e, request_id, measured).await;
            }
        };
        let limit = function.response_limit.min(EVENT_RESPONSE_LIMIT);
        if exchange
            .response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|len| len > limit)
        {
            let e = GatewayError::from(ForwardError::ResponseTooLarge);
            invocation.fail(&e);
            return invocation_failed(e, request_id, measured).await;
        }
        let (parts, incoming) = exchange.response.into_parts();
        invocation.responded(parts.status);
        let instance = invocation
            .instance()
            .map(|i| i.name().to_owned())
            .unwrap_or_default();
        let body = InvocationBody::new(incoming, exchange.deadline, limit, invocation);
        use http_body_util::BodyExt;
        let body = match GatewayBody::invocation(body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let error = match e.downcast::<ForwardError>() {
                    Ok(e) => GatewayError::from(*e),
                    Err(e) => GatewayError::from(ForwardError::InstanceFailed {
                        instance,
                        what: format!("failed while sending the response: {e}"),
                    }),
                };
                return invocation_failed(error, request_id, measured).await;
            }
        };
        Invoked::Answered {
            status: parts.status,
            body,
            request_id,
            // Sent when the invocation ended, which it did with its body.
            measured: measured.await.unwrap_or_default(),
        }
    }

    /// Accepts `event` for `function` asynchronously, as an `Event` invocation of the
    /// invocation API is accepted: kept durably before this returns its request id.
    pub async fn accept_event_body(
        &self,
        function: &Arc<Function>,
        event: bytes::Bytes,
        content_type: Option<HeaderValue>,
    ) -> Result<HeaderValue, GatewayError> {
        let request_id = headers::new_request_id();
        let upstream = self.event_request(event, content_type);
        match self.keep_event(function, upstream, &request_id).await {
            Ok(()) => Ok(request_id),
            Err(e) => {
                function.metrics().error(e.recent(&request_id));
                Err(e)
            }
        }
    }

    /// The request an instance gets for an event in memory.
    fn event_request(
        &self,
        event: bytes::Bytes,
        content_type: Option<HeaderValue>,
    ) -> Request<UpstreamBody> {
        let len = event.len();
        let mut upstream = Request::new(LimitedBody::stored(event));
        *upstream.method_mut() = Method::POST;
        *upstream.uri_mut() = self.event_uri.clone();
        *upstream.version_mut() = Version::HTTP_11;
        let headers = upstream.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(value) = content_type {
            headers.insert(http::header::CONTENT_TYPE, value);
        }
        upstream
    }
}

/// A failed synchronous invocation, with what its end measured (sent as it ended).
async fn invocation_failed(
    error: GatewayError,
    request_id: HeaderValue,
    measured: oneshot::Receiver<Measured>,
) -> Invoked {
    Invoked::Failed {
        error,
        request_id,
        measured: measured.await.unwrap_or_default(),
    }
}

/// How one attempt of an asynchronous event ended.
#[derive(Debug)]
pub enum EventOutcome {
    /// The function answered, with this status and body.
    Answered { status: u16, body: bytes::Bytes },
    /// The gateway failed the attempt: its error response's status and body.
    Failed { status: u16, body: String },
}

impl EventOutcome {
    /// The attempt failed before the instance answered: no slot, an instance that
    /// could not start, refused or crashed, a timeout.
    pub fn error(e: GatewayError, request_id: &HeaderValue) -> EventOutcome {
        let response = e.into_response(request_id);
        EventOutcome::Failed {
            status: response.status().as_u16(),
            body: String::from_utf8_lossy(response.body()).into_owned(),
        }
    }
}

/// Reads an event whole, refusing it past `limit` bytes.
async fn read_event(mut body: UpstreamBody, limit: u64) -> Result<bytes::Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast::<BodyTooLarge>() {
            Ok(too_large) => GatewayError::from(*too_large),
            Err(e) => GatewayError::from(ClientBodyError::of(&*e)),
        })?;
        if let Some(chunk) = frame.data_ref() {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(AsyncError::EventTooLarge { limit }.into());
            }
            data.extend_from_slice(chunk);
        }
    }
    Ok(data.freeze())
}

/// How an invocation gets its slot.
enum Admission {
    /// A synchronous invocation: a free slot, or a place in the queue.
    Queue,
    /// An asynchronous event, with the spare slot its dispatcher took for it.
    Spare(Slot),
}

/// The deadline passed before the response head arrived.
struct PastDeadline;

type Sending = h1::Sending<PooledConn, UpstreamBody>;

pin_project! {
    /// The exchange with an instance up to its response head, under the deadline.
    ///
    /// A client that leaves drops the request's future, and with it this one. That must
    /// not end the invocation early (the instance would lose its slot while still
    /// running it, and more invocations than `instance_concurrency` would run at once):
    /// dropped unfinished, the exchange goes on in a task of its own, with the
    /// invocation, until the response has ended (read and thrown away) or the deadline
    /// passed.
    struct Exchanging<'a> {
        sending: Option<Sending>,
        #[pin]
        deadline: Sleep,
        invocation: &'a mut Invocation,
        response_limit: u64,
    }

    impl PinnedDrop for Exchanging<'_> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(sending) = this.sending.take() else {
                return;
            };
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let invocation = this.invocation.detach();
            let deadline = this.deadline.deadline();
            runtime.spawn(finish_abandoned(sending, invocation, deadline, *this.response_limit));
        }
    }
}

impl<'a> Exchanging<'a> {
    fn new(
        sending: Sending,
        deadline: Instant,
        invocation: &'a mut Invocation,
        function: &Function,
    ) -> Self {
        Exchanging {
            sending: Some(sending),
            deadline: tokio::time::sleep_until(deadline),
            invocation,
            response_limit: function.response_limit,
        }
    }
}

impl Future for Exchanging<'_> {
    type Output = Result<Result<Response<ResponseBody>, SendError>, PastDeadline>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(sending) = this.sending.as_mut() else {
            return Poll::Ready(Err(PastDeadline));
        };
        if let Poll::Ready(sent) = Pin::new(sending).poll(cx) {
            *this.sending = None;
            return Poll::Ready(Ok(sent));
        }
        if this.deadline.poll(cx).is_ready() {
            *this.sending = None;
            return Poll::Ready(Err(PastDeadline));
        }
        Poll::Pending
    }
}

/// The rest of an exchange whose client left before the response head: the instance
/// keeps its slot until the response has ended or the deadline passed, and the
/// invocation is billed and logged like any other (as `client_closed`).
async fn finish_abandoned(sending: Sending, invocation: Invocation, deadline: Instant, limit: u64) {
    match tokio::time::timeout_at(deadline, sending).await {
        Ok(Ok(response)) => {
            let body = InvocationBody::new(response.into_body(), deadline, limit, invocation);
            Box::new(body).drain().await;
        }
        // The request never reached the instance whole; nobody waits for a retry.
        Ok(Err(_)) => invocation.end(Outcome::ClientClosed, None),
        Err(_) => invocation.end(Outcome::Timeout, None),
    }
}

/// Respond: stream the answer back; the invocation ends with its body. Synchronous, so
/// none of its values occupy the invocation's future (which hyper moves a few times per
/// request).
fn respond(
    function: &Function,
    exchange: Exchange,
    mut invocation: Invocation,
    wants_tail: bool,
    request_id: HeaderValue,
) -> Responded {
    let (mut parts, incoming) = exchange.response.into_parts();
    // The announced length, as the client parsed it from `Content-Length`.
    if incoming
        .size_hint()
        .exact()
        .is_some_and(|l| l > function.response_limit)
    {
        let e = GatewayError::from(ForwardError::ResponseTooLarge);
        invocation.fail(&e);
        return Responded::Now(error_response(e, &request_id));
    }
    headers::strip_response(&mut parts.headers, &request_id);
    invocation.responded(parts.status);
    let tail = if wants_tail { invocation.tail() } else { None };
    // A held (Tail) response is buffered: at most 6 MB, as the contract says.
    let limit = if tail.is_some() {
        function.response_limit.min(EVENT_RESPONSE_LIMIT)
    } else {
        function.response_limit
    };
    let held = tail.map(|rx| {
        let instance = invocation.instance().map(|i| i.name().to_owned());
        (rx, instance.unwrap_or_default())
    });
    let body = InvocationBody::new(incoming, exchange.deadline, limit, invocation);
    match held {
        None => Responded::Now(Response::from_parts(parts, GatewayBody::invocation(body))),
        Some((rx, instance)) => Responded::Held(Box::pin(with_log_tail(
            parts, body, rx, request_id, instance,
        ))),
    }
}

/// The host a request is for: the URI's authority when it has one (an absolute-form
/// target, RFC 9112 §3.2.2, or HTTP/2's `:authority`), else `Host`. An HTTP/1.1 request
/// must carry exactly one `Host` (§3.2) whatever its target's form. A target over
/// [`MAX_TARGET`] bytes is refused first (414).
///
/// `Host` is looked up once: its second value, if any, is reached from the first
/// without another lookup.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<Option<&str>, BadRequest> {
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_TARGET {
        return Err(BadRequest::TargetTooLong);
    }
    let authority = req.uri().authority().map(|a| a.as_str());
    let host = if req.version() == Version::HTTP_11 {
        let mut hosts = req.headers().get_all(HOST).iter();
        let host = hosts.next().ok_or(BadRequest::MissingHost)?;
        if hosts.next().is_some() {
            return Err(BadRequest::DuplicateHost);
        }
        Some(host)
    } else if authority.is_none() {
        req.headers().get(HOST)
    } else {
        None
    };
    Ok(authority.or_else(|| host.and_then(|h| h.to_str().ok())))
}

/// An error answer in the body every response has.
fn error_response(e: GatewayError, request_id: &HeaderValue) -> Response<GatewayBody> {
    e.into_response(request_id).map(GatewayBody::full)
}

/// A request refused before routing. Over HTTP/1 the connection is closed after the
/// answer: what follows a request whose framing or target is in doubt cannot be trusted
/// to be the next request.
fn bad_request(e: BadRequest, version: Version, request_id: &HeaderValue) -> Response<GatewayBody> {
    let mut response = error_response(e.into(), request_id);
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// An HTTP/1 request body must be framed one way (RFC 9112 §6.1, §6.3): by
/// `Content-Length`, or by one `chunked` transfer coding without a length. hyper reads a
/// request framed both ways, or chunked twice, by its chunks; a server behind or in
/// front of the gateway might read it otherwise, which is how requests are smuggled, so
/// such a request is refused. Only a body of unknown length can be chunked: a request
/// with a length alone, or no body, pays for no header lookup.
fn check_framing(req: &Request<Incoming>) -> Result<(), BadRequest> {
    if req.version() >= Version::HTTP_2 || req.body().size_hint().exact().is_some() {
        return Ok(());
    }
    let headers = req.headers();
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(coding) = codings.next() else {
        return Ok(());
    };
    let one_chunked = codings.next().is_none()
        && coding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
    if one_chunked && !headers.contains_key(CONTENT_LENGTH) {
        Ok(())
    } else {
        Err(BadRequest::AmbiguousFraming)
    }
}

/// What [`respond`] makes of a response head: the response, or (for a Tail
/// invocation) the future that holds it until the log tail is known.
enum Responded {
    Now(Response<GatewayBody>),
    Held(Pin<Box<dyn Future<Output = Response<GatewayBody>> + Send>>),
}

/// An invocation whose response head has arrived. Its body owns the connection.
struct Exchange {
    response: Response<ResponseBody>,
    deadline: Instant,
}

/// A request admitted: as the instance will see it, and whether the client asked for
/// the invocation's log tail (its `X-Scf-Log-Type` is stripped with the rest).
struct Prepared {
    upstream: Request<UpstreamBody>,
    wants_tail: bool,
    /// `X-Scf-Invocation-Type: Event` on the invocation API.
    event: bool,
}

/// A request refused at admission for its announced body size.
struct TooLarge {
    limit: u64,
    /// The body, unless the client waits for `100 Continue` and so never sends it.
    unread: Option<Incoming>,
}

impl TooLarge {
    /// Reads the body away (bounded in time) so the client can read the answer, and
    /// gives the answer.
    async fn drain(self) -> GatewayError {
        if let Some(body) = self.unread {
            let _ = tokio::time::timeout(DRAIN_TIME, body::discard(body)).await;
        }
        BodyTooLarge { limit: self.limit }.into()
    }
}

/// Why forwarding failed.
// The request travels back by value: boxing it would allocate on every retry.
#[allow(clippy::large_enum_variant)]
enum Failure {
    /// Nothing reached the instance: the request comes back to be tried elsewhere.
    Refused(Request<UpstreamBody>),
    /// The request was (at least partly) sent: it must not be sent again.
    Failed(UpstreamError),
}

/// Counts a refused attempt; true once the pool's limit of attempts is used up (read at
/// the first refusal: the attempts left before the one that was just refused).
fn out_of_attempts(left: &mut Option<usize>, pool: &Pool) -> bool {
    let left = left.get_or_insert_with(|| pool.max_attempts());
    *left = left.saturating_sub(1);
    *left == 0
}

fn refused(instance: &Instance) -> GatewayError {
    ForwardError::InstanceFailed {
        instance: instance.name().to_owned(),
        what: "refused the connection".into(),
    }
    .into()
}

/// A warm connection from the pool, or a new one, and the instant it was in hand (the
/// hand-over); `None` if the instance refuses. One clock read serves the upstream's
/// last use, the pooled connection's idle check and the hand-over.
async fn connection(instance: &Instance, pool: &Pool) -> Option<(PooledConn, Instant)> {
    let now = Instant::now();
    instance.touch(now);
    match instance.checkout(pool.idle_timeout(), now) {
        Some(conn) => {
            pool.metrics().connection(true);
            Some((conn, now))
        }
        // Opening a connection is the slow path; boxed to keep the hot future small.
        None => {
            let conn = Box::pin(instance.connect(pool.metrics())).await.ok()?;
            Some((conn, Instant::now()))
        }
    }
}

/// The second try of a request whose pooled connection was found closed, on a
/// connection opened for it. Once it is sent, it is under the same guard as the first
/// try ([`Exchanging`]): a client that leaves does not end the invocation early. While
/// the connection opens nothing has reached the instance, so leaving then ends it.
async fn send_fresh(
    req: Request<UpstreamBody>,
    stamp: &[&[u8]],
    deadline: Instant,
    invocation: &mut Invocation,
    function: &Function,
) -> Result<Result<Response<ResponseBody>, Failure>, PastDeadline> {
    let Some(instance) = invocation.instance().cloned() else {
        return Ok(Err(Failure::Refused(req)));
    };
    let connecting = instance.connect(function.pool().metrics());
    let fresh = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(_)) => return Ok(Err(Failure::Refused(req))),
        Err(_) => return Err(PastDeadline),
    };
    let sending = h1::send(fresh, req, stamp);
    match Exchanging::new(sending, deadline, invocation, function).await? {
        Ok(response) => Ok(Ok(response)),
        Err(SendError::Failed(e)) => Ok(Err(Failure::Failed(e))),
        Err(SendError::Unsent(req)) => Ok(Err(Failure::Refused(req))),
    }
}

/// Reads the request body into memory before an instance is chosen when it is small
/// (see [`LimitedBody::poll_buffer`]); a larger one is left to stream.
///
/// A body that is already in hand (it came with the head, the common case) is taken on
/// the first poll, with no timer, no allocation and nothing counted. Otherwise the
/// wait is bounded by `wait`: the function's `timeout`, at most
/// `server.header_read_timeout` (a body that took longer would have used up the
/// invocation's own time streaming to an instance anyway, so no client that could have
/// been served is refused), and what is held counts against the process's
/// [`body::BUDGET`].
async fn read_small_body(body: &mut UpstreamBody, wait: Duration) -> Result<(), ClientBodyError> {
    let mut gathered = BytesMut::new();
    let first =
        std::future::poll_fn(|cx| Poll::Ready(body.poll_buffer(&mut gathered, None, cx))).await;
    match first {
        Poll::Ready(read) => read,
        // Slow path, boxed: the request's future stays small.
        Poll::Pending => Box::pin(read_slow_body(body, gathered, wait)).await,
    }
}

/// The rest of [`read_small_body`] for a client that is slow to send.
async fn read_slow_body(
    body: &mut UpstreamBody,
    mut gathered: BytesMut,
    wait: Duration,
) -> Result<(), ClientBodyError> {
    let mut reservation = Reservation::new(&body::BUDGET);
    let rest =
        std::future::poll_fn(|cx| body.poll_buffer(&mut gathered, Some(&mut reservation), cx));
    match tokio::time::timeout(wait, rest).await {
        Ok(read) => read,
        Err(_) => Err(ClientBodyError::TooSlow {
            seconds: seconds_text(wait),
        }),
    }
}

/// What a failed exchange means for the client. For a launched instance whose
/// connection broke, the process's fate says more: its exit status or signal, or the
/// memory limit that killed it.
async fn failed(instance: &Instance, function: &Function, e: UpstreamError) -> GatewayError {
    let error = classify(instance, e);
    if matches!(
        error,
        GatewayError::BodyTooLarge(_) | GatewayError::ClientBody(_)
    ) {
        return error;
    }
    if instance.is_launched() {
        if let Ok(Some(exit)) = tokio::time::timeout(EXIT_GRACE, instance.exited()).await {
            if exit.oom_killed {
                return ForwardError::OutOfMemory {
                    instance: instance.name().to_owned(),
                    memory_mb: function.memory_mb,
                }
                .into();
            }
            return ForwardError::InstanceFailed {
                instance: instance.name().to_owned(),
                what: exit.to_string(),
            }
            .into();
        }
    }
    error
}

/// `X-Scf-Log-Type: Tail`: the response is held until the invocation's END line, so its
/// last 4 KB of log can travel base64-encoded in `X-Scf-Log-Result`.
async fn with_log_tail(
    mut parts: http::response::Parts,
    body: InvocationBody,
    tail: oneshot::Receiver<String>,
    request_id: HeaderValue,
    instance: String,
) -> Response<GatewayBody> {
    use http_body_util::BodyExt;
    // As the client's body: a client that leaves while it is held does not end the
    // invocation early either.
    let collected = match GatewayBody::invocation(body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let error = match e.downcast::<ForwardError>() {
                Ok(e) => GatewayError::from(*e),
                Err(e) => GatewayError::from(ForwardError::InstanceFailed {
                    instance,
                    what: format!("failed while sending the response: {e}"),
                }),
            };
            return error_response(error, &request_id);
        }
    };
    let text = tail.await.unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&logs::base64(text.as_bytes())) {
        parts.headers.insert(LOG_RESULT, value);
    }
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, GatewayBody::full(collected))
}

/// What a failed exchange means for the client: the client's own body failing is the
/// client's fault (413 past the limit, 400 for broken framing or a body that stopped);
/// everything else is the instance's failure, in words.
fn classify(instance: &Instance, e: UpstreamError) -> GatewayError {
    if let UpstreamError::RequestBody(body) = &e {
        if let Some(too_large) = body.downcast_ref::<BodyTooLarge>() {
            return (*too_large).into();
        }
        return ClientBodyError::of(&**body).into();
    }
    ForwardError::InstanceFailed {
        instance: instance.name().to_owned(),
        what: e.to_string(),
    }
    .into()
}

/// The request target a web function sees: the original path and query, minus the
/// route's prefix when it strips one.
pub(crate) fn web_uri(uri: &Uri, strip: usize) -> Uri {
    let Some(pq) = uri.path_and_query() else {
        return Uri::from_static("/");
    };
    // An absolute-form target without a path (`http://host?q`) has a path-and-query
    // of `?q`: it gets its `/` below.
    if strip == 0 && pq.as_str().starts_with('/') {
        return Uri::from(pq.clone());
    }
    let rest = pq.path().get(strip..).unwrap_or("");
    let path = if rest.is_empty() { "/" } else { rest };
    let text = match pq.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(text)
        .map(Uri::from)
        .unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_uri_strips_on_request() {
        let uri: Uri = "/web/a/b?x=1".parse().unwrap();
        assert_eq!(web_uri(&uri, 0), "/web/a/b?x=1");
        assert_eq!(web_uri(&uri, 4), "/a/b?x=1");
        let uri: Uri = "/web?x=1".parse().unwrap();
        assert_eq!(web_uri(&uri, 4), "/?x=1");
    }

    #[test]
    fn the_request_host_is_the_uris_and_http_1_1_needs_exactly_one_host() {
        let request = |version, uri: &str, hosts: &[&str]| {
            let mut req = Request::builder().version(version).uri(uri);
            for host in hosts {
                req = req.header(HOST, *host);
            }
            req.body(()).unwrap()
        };
        let h11 = Version::HTTP_11;
        let req = request(h11, "/web/x", &["web.test"]);
        assert_eq!(request_host(&req).unwrap(), Some("web.test"));
        let req = request(h11, "http://web.test/web/x", &["other"]);
        assert_eq!(request_host(&req).unwrap(), Some("web.test"));
        let req = request(h11, "/web/x", &[]);
        assert!(matches!(request_host(&req), Err(BadRequest::MissingHost)));
        let req = request(h11, "http://web.test/web/x", &[]);
        assert!(matches!(request_host(&req), Err(BadRequest::MissingHost)));
        let req = request(h11, "/web/x", &["a", "a"]);
        assert!(matches!(request_host(&req), Err(BadRequest::DuplicateHost)));
        // HTTP/1.0 may leave it out; HTTP/2 names the host in `:authority`.
        let req = request(Version::HTTP_10, "/web/x", &[]);
        assert_eq!(request_host(&req).unwrap(), None);
        let req = request(Version::HTTP_2, "http://web.test/web/x", &["other"]);
        assert_eq!(request_host(&req).unwrap(), Some("web.test"));
        let req = request(Version::HTTP_2, "/web/x", &["web.test"]);
        assert_eq!(request_host(&req).unwrap(), Some("web.test"));
        // The target's length is bounded, whatever the host.
        let long = format!("/web/{}", "x".repeat(MAX_TARGET));
        let req = request(h11, &long, &["web.test"]);
        assert!(matches!(request_host(&req), Err(BadRequest::TargetTooLong)));
        let fits = format!("/web/{}", "x".repeat(MAX_TARGET - 5));
        let req = request(h11, &fits, &["web.test"]);
        assert_eq!(request_host(&req).unwrap(), Some("web.test"));
    }
}
