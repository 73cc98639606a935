use super::*;
use crate::config::testing::*;
use crate::config::Location;

const WEB: &str =
    "[[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"127.0.0.1:9002\"]\n";

#[test]
fn routes_are_normalized() {
    let config = ok(&format!(
        "{FUNCTION}{WEB}\
         [[routes]]\npath_prefix = \"/web/\"\nfunction = \"web\"\n\
         [[routes]]\nhost = \"Example.COM:8080\"\npath_prefix = \"/\"\nfunction = \"default/web\"\nstrip_prefix = true\n\
         [[routes]]\nhost = \"[::1]:80\"\npath_prefix = \"/a//\"\nfunction = \"web\"\n"
    ));
    let routes: Vec<(Option<&str>, &str, usize, bool)> = config
        .routes
        .iter()
        .map(|r| {
            (
                r.host.as_deref(),
                r.path_prefix.as_str(),
                r.function,
                r.strip_prefix,
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (None, "/web", 1, false),
            (Some("example.com"), "/", 1, true),
            (Some("[::1]"), "/a", 1, false),
        ]
    );
}

#[test]
fn routes_name_functions_with_their_namespace() {
    let config = ok(&format!(
        "{WEB}namespace = \"prod\"\n{WEB}\
         [[routes]]\npath_prefix = \"/p\"\nfunction = \"prod/web\"\n\
         [[routes]]\npath_prefix = \"/d\"\nfunction = \"web\"\n"
    ));
    assert_eq!(config.routes[0].function, 0);
    assert_eq!(config.routes[1].function, 1);
}

#[test]
fn a_route_to_an_unknown_function() {
    let e = one_error(&format!(
        "{WEB}[[routes]]\npath_prefix = \"/x\"\nfunction = \"prod/web\"\n"
    ));
    assert_eq!(e.location, at(7, 12));
    assert_eq!(
        e.message,
        "routes[0].function: route to unknown function \"web\" in namespace \"prod\" \
         (no [[functions]] entry has that name)"
    );
}

#[test]
fn a_route_to_an_event_function() {
    let e = one_error(&format!(
        "{FUNCTION}[[routes]]\npath_prefix = \"/x\"\nfunction = \"hello\"\n"
    ));
    assert_eq!(e.location, at(6, 12));
    assert_eq!(
        e.message,
        "routes[0].function: routes can only target functions of type \"http\"; \
         \"default/hello\" is of type \"event\""
    );
}

#[test]
fn duplicate_routes() {
    let e = one_error(&format!(
        "{WEB}[[routes]]\nhost = \"a.com\"\npath_prefix = \"/x\"\nfunction = \"web\"\n\
         [[routes]]\nhost = \"A.com:81\"\npath_prefix = \"/x/\"\nfunction = \"web\"\n"
    ));
    assert_eq!(e.location, at(11, 15));
    assert_eq!(
        e.message,
        "duplicate route: host \"a.com\" and path_prefix \"/x\" are already used by routes[0]"
    );
}

#[test]
fn bad_routes() {
    let all = errors(&format!(
        "{WEB}[[routes]]\nhost = \"*.a.com\"\npath_prefix = \"x\"\nfunction = \"a/b/c\"\n\
         [[routes]]\nstrip_prefix = 1\n"
    ));
    let found: Vec<(&Location, &str)> = all
        .iter()
        .map(|e| (&e.location, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (&at(6, 8), "routes[0].host: invalid host \"*.a.com\": wildcards other than \"*\" alone are not supported"),
            (&at(7, 15), "routes[0].path_prefix: invalid path_prefix \"x\": must start with \"/\""),
            (&at(8, 12), "routes[0].function: invalid function reference \"a/b/c\": expected \"name\" or \"namespace/name\""),
            (&path("routes[1].path_prefix"), "missing required key `path_prefix`"),
            (&path("routes[1].function"), "missing required key `function`"),
            (&at(10, 16), "routes[1].strip_prefix: expected a boolean (true or false), found integer"),
        ]
    );
}

#[test]
fn a_function_with_a_bad_type_does_not_also_fail_its_routes() {
    let all = errors(
        "[[functions]]\nname = \"w\"\ntype = \"web\"\ninstances = [\"127.0.0.1:1\"]\n\
         [[routes]]\npath_prefix = \"/\"\nfunction = \"w\"\n",
    );
    assert_eq!(all.len(), 1, "{all:#?}");
}

#[test]
fn host_and_prefix_rules() {
    assert_eq!(parse_host("*"), Ok(None));
    assert_eq!(
        parse_host("API.Example.com"),
        Ok(Some("api.example.com".into()))
    );
    assert_eq!(parse_host("a.com:8080"), Ok(Some("a.com".into())));
    assert_eq!(parse_host("[::1]:8080"), Ok(Some("[::1]".into())));
    assert_eq!(parse_host("[::1]"), Ok(Some("[::1]".into())));
    assert!(parse_host("[::1]x").is_err());
    assert!(parse_host("[::1").is_err());
    assert!(parse_host("").is_err());
    assert!(parse_host(":80").is_err());
    assert!(parse_host("a b").is_err());
    assert_eq!(normalize_prefix("/"), Ok("/".into()));
    assert_eq!(normalize_prefix("/web/"), Ok("/web".into()));
    assert_eq!(normalize_prefix("/web"), Ok("/web".into()));
    assert!(normalize_prefix("web").is_err());
    assert!(normalize_prefix("/a?b").is_err());
}
