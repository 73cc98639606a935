//! Which function a request is for: the invocation API by namespace and name, web
//! requests by host and longest path prefix.
//!
//! Both lookups are hash probes whose count depends on the request (one per path
//! segment at most), never on how many functions or routes are configured.

use std::borrow::Cow;
use std::collections::HashMap as StdHashMap;

use crate::config::{Config, FunctionKind};
use crate::error::{reflected, RouteError};

/// The tables' maps. They are built once from the config and only read per request, so
/// the keyed SipHash that guards maps clients can insert into buys nothing here: a
/// client's key can only probe what the operator configured. foldhash (hashbrown's own
/// default hasher) with a fixed seed costs a fraction of SipHash on the short names
/// probed on every request.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::FixedState>;

const INVOKE_PREFIX: &str = "/v1/functions/";
const INVOKE_SUFFIX: &str = "/invocations";
const LATEST: &str = "$LATEST";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `POST /v1/functions/{name}/invocations` for the function at this index.
    Invoke { function: usize },
    /// A web request for the function at this index; `strip` leading bytes of the path
    /// are removed before it is forwarded (0 unless the route says `strip_prefix`).
    Web { function: usize, strip: usize },
    /// The query API of asynchronous invocations (`/v1/requests/{id}`,
    /// `/v1/functions/{name}/requests`): the gateway answers it.
    Query,
    /// `POST /` while `[[api.keys]]` exist: a Tencent Cloud API 3.0 call if it carries
    /// `X-TC-Action` (the caller checks, and routes it as a web request otherwise).
    Api,
}

#[derive(Debug)]
struct Entry {
    index: usize,
    version: String,
    kind: FunctionKind,
}

#[derive(Debug, Clone, Copy)]
struct RouteEntry {
    function: usize,
    strip: bool,
}

/// Path prefix (normalized, no trailing `/` except the root) -> route.
#[derive(Debug, Default)]
struct PrefixTable(HashMap<Box<str>, RouteEntry>);

impl PrefixTable {
    /// The longest configured prefix of `path` that ends on a segment boundary, with
    /// its length.
    fn longest(&self, path: &str) -> Option<(RouteEntry, usize)> {
        if self.0.is_empty() {
            return None;
        }
        let mut end = path.len();
        loop {
            let candidate = &path[..end];
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(route) = self.0.get(key) {
                let len = if key == "/" { 0 } else { key.len() };
                return Some((*route, len));
            }
            if end == 0 {
                return None;
            }
            end = candidate.rfind('/').unwrap_or(0);
        }
    }
}

/// The routing table built from a config.
#[derive(Debug, Default)]
pub struct Router {
    /// namespace -> name -> function: two probes, no allocation per lookup.
    functions: HashMap<Box<str>, HashMap<Box<str>, Entry>>,
    hosts: HashMap<Box<str>, PrefixTable>,
    any_host: PrefixTable,
    /// `[[api.keys]]` exist: `POST /` may be an API call.
    api: bool,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut router = Router {
            api: config.api.enabled(),
            ..Router::default()
        };
        for (index, f) in config.functions.iter().enumerate() {
            router
                .functions
                .entry(f.namespace.as_str().into())
                .or_default()
                .insert(
                    f.name.as_str().into(),
                    Entry {
                        index,
                        version: f.version.clone(),
                        kind: f.kind,
                    },
                );
        }
        for route in &config.routes {
            let table = match &route.host {
                Some(host) => router.hosts.entry(host.as_str().into()).or_default(),
                None => &mut router.any_host,
            };
            table.0.insert(
                route.path_prefix.as_str().into(),
                RouteEntry {
                    function: route.function,
                    strip: route.strip_prefix,
                },
            );
        }
        router
    }

    /// Routes one request. `host` is the `Host` header or the HTTP/2 authority.
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        host: Option<&str>,
    ) -> Result<Target, RouteError> {
        if method == http::Method::POST {
            if let Some(name) = invocation_name(path) {
                return self.invocation(name, query);
            }
            // Looked at only once the invocation API did not match: its requests pay
            // nothing for the API.
            if self.api && path == "/" {
                return Ok(Target::Api);
            }
        } else if path.starts_with("/v1/") && crate::asynchronous::api::is_query_path(path) {
            return Ok(Target::Query);
        }
        self.web(path, host)
    }

    fn invocation(&self, name: &str, query: Option<&str>) -> Result<Target, RouteError> {
        let mut namespace: Cow<str> = Cow::Borrowed("default");
        let mut qualifier: Cow<str> = Cow::Borrowed(LATEST);
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("namespace", v)) => namespace = percent_decode(v),
                Some(("qualifier", v)) => qualifier = percent_decode(v),
                _ => {}
            }
        }
        let not_found = || RouteError::FunctionNotFound {
            name: reflected(name),
            namespace: reflected(&namespace),
        };
        let entry = self
            .functions
            .get(namespace.as_ref())
            .and_then(|names| names.get(name))
            .ok_or_else(not_found)?;
        if qualifier != LATEST && qualifier != entry.version.as_str() {
            return Err(not_found());
        }
        if entry.kind == FunctionKind::Http {
            return Err(RouteError::WebFunction {
                name: reflected(name),
                namespace: reflected(&namespace),
            });
        }
        Ok(Target::Invoke {
            function: entry.index,
        })
    }

    /// Routes a request by host and path prefix alone (a web request).
    pub fn web(&self, path: &str, host: Option<&str>) -> Result<Target, RouteError> {
        let host_name = host.map(host_without_port).map(lowercase);
        let exact = host_name
            .as_deref()
            .and_then(|h| self.hosts.get(h))
            .and_then(|table| table.longest(path));
        match exact.or_else(|| self.any_host.longest(path)) {
            Some((route, len)) => Ok(Target::Web {
                function: route.function,
                strip: if route.strip { len } else { 0 },
            }),
            None => Err(RouteError::NoRoute {
                host: reflected(host.unwrap_or("")),
                path: reflected(path),
            }),
        }
    }
}

/// `{name}` of `/v1/functions/{name}/invocations`.
fn invocation_name(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix(INVOKE_PREFIX)?
        .strip_suffix(INVOKE_SUFFIX)?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port -> [v6], as routes store it
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn lowercase(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Query values as browsers and SDKs send them (`%24LATEST`, `+` for space). By hand
/// rather than with `form_urlencoded`, which costs the invocation path more: see
/// docs/adr/0007-query-decoding.md.
pub(crate) fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains(['%', '+']) {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::parse;
    use http::Method;
    use std::path::Path;

    fn router(extra: &str) -> Router {
        let text = format!(
            "[[functions]]\nname = \"hello\"\nversion = \"2\"\ninstances = [\"127.0.0.1:1\"]\n\
             [[functions]]\nname = \"hello\"\nnamespace = \"prod\"\ninstances = [\"127.0.0.1:1\"]\n\
             [[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"127.0.0.1:1\"]\n\
             [[functions]]\nname = \"api\"\ntype = \"http\"\ninstances = [\"127.0.0.1:1\"]\n{extra}"
        );
        let config = parse(&text, Path::new("t.toml"), &|_| None).expect("valid config");
        Router::new(&config)
    }

    #[test]
    fn post_root_is_the_cloud_api_only_with_keys() {
        let post = Method::POST;
        let keys = "[[api.keys]]\nsecret_id = \"id\"\nsecret_key = \"key\"\n";
        let with_root_route = "[[routes]]\npath_prefix = \"/\"\nfunction = \"web\"\n";
        let r = router(&format!("{keys}{with_root_route}"));
        assert_eq!(r.route(&post, "/", None, None).unwrap(), Target::Api);
        assert!(matches!(
            r.route(&Method::GET, "/", None, None).unwrap(),
            Target::Web { .. }
        ));
        assert!(matches!(
            r.route(&post, "/x", None, None).unwrap(),
            Target::Web { .. }
        ));
        let r = router(with_root_route);
        assert!(matches!(
            r.route(&post, "/", None, None).unwrap(),
            Target::Web { .. }
        ));
    }

    #[test]
    fn invocation_api_by_namespace_and_qualifier() {
        let r = router("");
        let post = Method::POST;
        let path = "/v1/functions/hello/invocations";
        assert_eq!(
            r.route(&post, path, None, None).unwrap(),
            Target::Invoke { function: 0 }
        );
        assert_eq!(
            r.route(&post, path, Some("namespace=prod"), None).unwrap(),
            Target::Invoke { function: 1 }
        );
        assert_eq!(
            r.route(&post, path, Some("x=1&namespace=pr%6Fd&y"), None)
                .unwrap(),
            Target::Invoke { function: 1 }
        );
        assert!(r.route(&post, path, Some("qualifier=2"), None).is_ok());
        assert!(r
            .route(&post, path, Some("qualifier=%24LATEST"), None)
            .is_ok());
        let err = r.route(&post, path, Some("qualifier=3"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Function [hello] not found in namespace [default]"
        );
        let err = r
            .route(
                &post,
                "/v1/functions/nope/invocations",
                Some("namespace=x"),
                None,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Function [nope] not found in namespace [x]"
        );
        assert!(matches!(
            r.route(&post, "/v1/functions/web/invocations", None, None),
            Err(RouteError::WebFunction { .. })
        ));
    }

    #[test]
    fn errors_repeat_at_most_a_bounded_part_of_the_request() {
        let r = router("");
        let long = "h".repeat(100_000);
        let path = format!("/{}", "p".repeat(100_000));
        let err = r.route(&Method::GET, &path, None, Some(&long)).unwrap_err();
        let RouteError::NoRoute { host, path } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(host.len(), crate::error::REFLECTED_MAX + 3);
        assert_eq!(path.len(), crate::error::REFLECTED_MAX + 3);
        assert!(err.to_string().len() < 1024);
        let name = "n".repeat(10_000);
        let err = r
            .route(
                &Method::POST,
                &format!("/v1/functions/{name}/invocations"),
                Some(&format!("namespace={name}")),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().len() < 1024, "{err}");
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let r = router(
            "[[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\nstrip_prefix = true\n\
             [[routes]]\npath_prefix = \"/web/api\"\nfunction = \"api\"\n\
             [[routes]]\nhost = \"api.example.com\"\npath_prefix = \"/\"\nfunction = \"api\"\n",
        );
        let get = Method::GET;
        assert_eq!(
            r.route(&get, "/web", None, Some("x")).unwrap(),
            Target::Web {
                function: 2,
                strip: 4
            }
        );
        assert_eq!(
            r.route(&get, "/web/a/b", None, None).unwrap(),
            Target::Web {
                function: 2,
                strip: 4
            }
        );
        assert_eq!(
            r.route(&get, "/web/api/x", None, None).unwrap(),
            Target::Web {
                function: 3,
                strip: 0
            }
        );
        assert!(r.route(&get, "/website", None, None).is_err());
        assert_eq!(
            r.route(&get, "/anything", None, Some("API.example.com:8080"))
                .unwrap(),
            Target::Web {
                function: 3,
                strip: 0
            }
        );
        // An exact host without a matching prefix falls back to the wildcard routes.
        let err = r.route(&get, "/nothing", None, Some("other")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "No route for host [other] and path [/nothing]"
        );
    }

    #[test]
    fn decoding_and_hosts() {
        assert_eq!(percent_decode("%24LATEST"), "$LATEST");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.b:80"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
    }
}
