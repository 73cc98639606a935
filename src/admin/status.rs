//! `GET /`: the status page, for people. One HTML document that reloads itself every few
//! seconds (`<meta http-equiv="refresh">`): no JavaScript, no external resource, a little
//! inline CSS. A summary table first, then per function its settings, instances and
//! their states, queue, in-flight and invocations by outcome, its last cold starts and
//! errors; last, the requests that matched no function.
//!
//! Every text printed is HTML-escaped: function names come from the config, and error
//! messages may carry what a client sent (a host, a path). The page shows what the
//! admin API shows plus the recent rings, and so nothing of `launch.env`,
//! `[credentials]` or the admin token.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::functions::{FunctionView, Listing};
use crate::invoke::Gateway;
use crate::metrics::recent::{ColdStart, RecentError};

/// Seconds between the page's reloads.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2330;--muted:#667085;--line:#d9dee7;--bg:#fff;\
--panel:#f6f8fb;--ok:#137a3a;--ok-bg:#dcf5e5;--bad:#b42318;--bad-bg:#fde4e1;\
--warn:#8a5a00;--warn-bg:#fff1c9}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ef;--muted:#98a2b3;--line:#2f3746;\
--bg:#12161e;--panel:#1a202b;--ok:#6fdc97;--ok-bg:#173324;--bad:#ff8a80;--bad-bg:#3d1c1a;\
--warn:#ffd166;--warn-bg:#3a3016}}\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
color:var(--fg);background:var(--bg)}\
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 16px;\
border-bottom:1px solid var(--line);padding-bottom:12px;margin-bottom:18px}\
h1{font-size:22px;margin:0}h2{font-size:18px;margin:0 0 10px}\
h3{font-size:13px;margin:16px 0 6px;color:var(--muted);text-transform:uppercase;\
letter-spacing:.04em}\
.muted{color:var(--muted)}.when{white-space:nowrap}\
section{background:var(--panel);border:1px solid var(--line);border-radius:8px;\
padding:16px 18px;margin:0 0 18px}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:5px 10px 5px 0;border-bottom:1px solid var(--line);\
vertical-align:top}\
th{font-weight:600;color:var(--muted);font-size:12px}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
tr:last-child td{border-bottom:0}\
.facts{display:flex;flex-wrap:wrap;gap:4px 22px;margin:0 0 6px}\
.facts div{white-space:nowrap}.facts b{font-weight:600}\
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:0 28px}\
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;\
font-weight:600}\
.ready,.ok{color:var(--ok);background:var(--ok-bg)}\
.down,.bad{color:var(--bad);background:var(--bad-bg)}\
.starting,.warn{color:var(--warn);background:var(--warn-bg)}\
.err{color:var(--bad);font-weight:600}\
.ns{font-weight:400;color:var(--muted);font-size:14px}\
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;\
overflow-wrap:anywhere}\
a{color:inherit}\
";

/// The page: the listing, the recent rings of each function, and the requests that
/// matched no function.
pub(super) fn render(gateway: &Gateway, listing: &Listing, ready: bool) -> String {
    let now = SystemTime::now();
    let mut out = String::with_capacity(8_192 + 4_096 * listing.functions.len());
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>scf-gateway status</title><style>{STYLE}</style></head><body><main>\n"
    );
    let (readiness, class) = if ready {
        ("ready", "ok")
    } else {
        ("not ready", "bad")
    };
    let _ = writeln!(
        out,
        "<header><h1>scf-gateway</h1><span class=\"badge {class}\">{readiness}</span>\
         <span class=\"muted\">{} functions · as of {} · refreshes every {REFRESH_SECS} s</span>\
         </header>",
        listing.functions.len(),
        Time(now),
    );
    summary(&mut out, listing);
    for (index, f) in listing.functions.iter().enumerate() {
        function(&mut out, index, f, now);
    }
    let (unmatched, errors) = gateway.registry().unmatched_errors();
    let _ = write!(
        out,
        "<section id=\"unmatched\"><h2>Requests that matched no function</h2>\
         <div class=\"facts\"><div>Total <b>{unmatched}</b></div></div>"
    );
    recent_errors(&mut out, &errors, now);
    out.push_str("</section>\n</main></body></html>\n");
    out
}

/// Headers that keep the page what it is: nothing runs, nothing loads, nothing frames it.
pub(super) fn harden(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn summary(out: &mut String, listing: &Listing) {
    if listing.functions.is_empty() {
        out.push_str("<section><p class=\"muted\">No functions are configured.</p></section>\n");
        return;
    }
    out.push_str(
        "<section><h2>Functions</h2><table><thead><tr><th>Function</th><th>Namespace</th>\
         <th>Type</th><th>Source</th><th class=\"n\">Instances ready</th>\
         <th class=\"n\">In flight</th><th class=\"n\">Queued</th>\
         <th class=\"n\">Invocations</th><th class=\"n\">Errors</th></tr></thead><tbody>",
    );
    for (index, f) in listing.functions.iter().enumerate() {
        let ready = f.instances.iter().filter(|i| i.state == "ready").count();
        let failed = f.invocations.failed();
        let _ = write!(
            out,
            "<tr><td><a href=\"#f{index}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{ready} / {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n{}\">{failed}</td></tr>",
            Esc(&f.name),
            Esc(&f.namespace),
            f.kind,
            f.source,
            f.instances.len(),
            f.inflight,
            f.queued,
            f.invocations.total(),
            if failed > 0 { " err" } else { "" },
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn function(out: &mut String, index: usize, f: &FunctionView, now: SystemTime) {
    let _ = write!(
        out,
        "<section id=\"f{index}\"><h2>{} <span class=\"ns\">namespace {}</span></h2>\
         <div class=\"facts\"><div>Type <b>{}</b></div><div>Source <b>{}</b></div>\
         <div>Memory <b>{} MB</b></div><div>Timeout <b>{}</b></div>\
         <div>Concurrency <b>{}</b> per instance</div><div>Queue depth <b>{}</b></div>\
         <div>In flight <b>{}</b></div><div>Queued <b>{}</b></div>\
         <div>Cold starts <b>{}</b></div></div>",
        Esc(&f.name),
        Esc(&f.namespace),
        f.kind,
        f.source,
        f.memory_mb,
        Millis(f.timeout_ms),
        f.instance_concurrency,
        f.queue_depth,
        f.inflight,
        f.queued,
        f.function.metrics().cold_starts(),
    );
    if let Some(image) = &f.image {
        let _ = write!(
            out,
            "<div class=\"facts\"><div>Image <code>{}</code></div><div>Digest <code>{}</code></div></div>",
            Esc(&image.reference),
            Esc(image.digest.as_deref().unwrap_or("unreadable")),
        );
    }
    out.push_str("<div class=\"cols\"><div><h3>Instances</h3>");
    if f.instances.is_empty() {
        out.push_str("<p class=\"muted\">None running.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Instance</th><th>Address</th><th>State</th>\
             <th class=\"n\">In flight</th></tr></thead><tbody>",
        );
        for i in &f.instances {
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td>\
                 <td><span class=\"badge {state}\">{state}</span></td>\
                 <td class=\"n\">{}</td></tr>",
                Esc(i.name.as_deref().unwrap_or("(starting)")),
                Esc(i.address.as_deref().unwrap_or("-")),
                i.inflight,
                state = i.state,
            );
        }
        out.push_str("</tbody></table>");
    }
    let metrics = f.function.metrics();
    cold_starts(out, &metrics.recent_cold_starts(), now);
    out.push_str(
        "</div><div><h3>Invocations</h3><table><thead><tr><th>Outcome</th>\
         <th class=\"n\">Count</th></tr></thead><tbody>",
    );
    for (outcome, n) in &f.invocations.0 {
        let _ = write!(
            out,
            "<tr{}><td>{}</td><td class=\"n\">{n}</td></tr>",
            if *n == 0 { " class=\"muted\"" } else { "" },
            outcome.as_str()
        );
    }
    let failed = f.invocations.failed();
    let _ = write!(
        out,
        "<tr><td><b>errors</b> (all but success)</td><td class=\"n{}\">{failed}</td></tr>\
         </tbody></table></div></div>",
        if failed > 0 { " err" } else { "" }
    );
    recent_errors(out, &metrics.recent_errors(), now);
    out.push_str("</section>\n");
}

fn cold_starts(out: &mut String, starts: &[ColdStart], now: SystemTime) {
    out.push_str("<h3>Recent cold starts</h3>");
    if starts.is_empty() {
        out.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Ready at (UTC)</th><th class=\"n\">Took</th></tr></thead><tbody>",
    );
    for s in starts {
        let _ = write!(
            out,
            "<tr><td class=\"when\">{} <span class=\"muted\">{}</span></td>\
             <td class=\"n\">{}</td></tr>",
            Time(s.at),
            Ago(now, s.at),
            Took(s.took),
        );
    }
    out.push_str("</tbody></table>");
}

fn recent_errors(out: &mut String, errors: &[RecentError], now: SystemTime) {
    out.push_str("<h3>Recent errors</h3>");
    if errors.is_empty() {
        out.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>At (UTC)</th><th>Status</th><th>Code</th><th>Message</th>\
         <th>Request id</th></tr></thead><tbody>",
    );
    for e in errors {
        let _ = write!(
            out,
            "<tr><td class=\"when\">{} <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td>\
             <td>{}</td><td><code>{}</code></td></tr>",
            Time(e.at),
            Ago(now, e.at),
            e.status,
            e.code,
            Esc(&e.message),
            Esc(&e.request_id),
        );
    }
    out.push_str("</tbody></table>");
}

/// Text made safe for HTML element content and quoted attribute values.
struct Esc<'a>(&'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// A time as RFC 3339 in UTC, to the millisecond: `2026-12-07T22:55:51.123Z`.
struct Time(SystemTime);

impl Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            of_day / 3_600,
            of_day / 60 % 60,
            of_day % 60,
            since.subsec_millis()
        )
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// How long ago, roughly: `(12 s ago)`, `(3 min ago)`, `(2 h ago)`.
struct Ago(SystemTime, SystemTime);

impl Display for Ago {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.duration_since(self.1).unwrap_or_default().as_secs();
        match secs {
            0..=119 => write!(f, "({secs} s ago)"),
            120..=7_199 => write!(f, "({} min ago)", secs / 60),
            _ => write!(f, "({} h ago)", secs / 3_600),
        }
    }
}

/// A duration for people: `850 ms`, `1.25 s`.
struct Took(Duration);

impl Display for Took {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1_000 {
            write!(f, "{ms} ms")
        } else {
            write!(f, "{:.2} s", self.0.as_secs_f64())
        }
    }
}

/// A configured duration in milliseconds, as written in the config where it is whole.
struct Millis(u64);

impl Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ms if ms >= 1_000 && ms % 1_000 == 0 => write!(f, "{} s", ms / 1_000),
            ms => write!(f, "{ms} ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_printed_is_escaped() {
        assert_eq!(
            Esc("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(Esc("plain é").to_string(), "plain é");
        assert_eq!(Esc("").to_string(), "");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            Time(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)).to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000Z");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(Took(Duration::from_millis(850)).to_string(), "850 ms");
        assert_eq!(Took(Duration::from_millis(1_250)).to_string(), "1.25 s");
        assert_eq!(Millis(3_000).to_string(), "3 s");
        assert_eq!(Millis(500).to_string(), "500 ms");
        assert_eq!(Millis(1_500).to_string(), "1500 ms");
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(Ago(now, now).to_string(), "(0 s ago)");
        assert_eq!(
            Ago(now, now - Duration::from_secs(300)).to_string(),
            "(5 min ago)"
        );
        assert_eq!(
            Ago(now, now - Duration::from_secs(9_000)).to_string(),
            "(2 h ago)"
        );
    }
}
