//! Browsers: a request that carries an `Origin` is served from the service's
//! own origin (the dashboard) or one listed in `FLUX_CORS_ORIGINS`; from any
//! other web page, every method but GET and HEAD gets 403, so a page cannot
//! disable a key, change the mode or spend quota with a simple cross-site
//! POST. Listed origins get a proper CORS preflight and the headers that let
//! their pages read answers. Requests without an `Origin` (curl, SDKs,
//! servers) are not a browser's and pass untouched.
//!
//! The service's own origin is the one its `Host` header names, but only
//! when that host is an IP address or `localhost`: a name could be a page's
//! own name rebound to the service's address (DNS rebinding), whose
//! `Origin` and `Host` agree. A name the operator serves the dashboard
//! under is listed in `FLUX_CORS_ORIGINS`.

use super::error::ApiError;
use crate::config::{Allowed, normalise_origin};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Whose pages may call the service: its own, and `FLUX_CORS_ORIGINS`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub allowed: Allowed,
}

enum Verdict {
    Own,
    Listed(HeaderValue),
    Foreign(String),
}

impl Policy {
    fn judge(&self, origin: &HeaderValue, headers: &HeaderMap) -> Verdict {
        let text = origin.to_str().unwrap_or("");
        let Some(origin_norm) = normalise_origin(text) else {
            return Verdict::Foreign(text.to_string());
        };
        if self.is_own(&origin_norm, headers) {
            return Verdict::Own;
        }
        if self.allowed.lists(&origin_norm) {
            return Verdict::Listed(origin.clone());
        }
        Verdict::Foreign(text.to_string())
    }

    /// The origin names this service as the request's `Host` does, and
    /// that host is an address or `localhost`: no DNS answer can make a
    /// page's origin one of those (see the module doc).
    fn is_own(&self, origin: &str, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let scheme = origin.split("://").next().unwrap_or("http");
        let Some(own) = reqwest::Url::parse(&format!("{scheme}://{host}"))
            .ok()
            .filter(|u| u.path() == "/")
        else {
            return false;
        };
        let name = own.host_str().unwrap_or("");
        let unrebindable = name == "localhost"
            || name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok();
        unrebindable && own.origin().ascii_serialization() == origin
    }
}

/// What [`screen`] makes of a request.
pub enum Passage {
    /// No web page's, the service's own page's, or a foreign page's GET or
    /// HEAD: on to the service, its answer as it comes.
    On,
    /// A listed origin's: on, and its answer gets that origin's CORS
    /// headers ([`allow`]).
    Listed(HeaderValue),
    /// Answered here: a listed origin's preflight, or a foreign page's
    /// refusal.
    Answered(Response),
}

/// The origin check (see the module doc); one of the steps of
/// [`super::gate`].
pub fn screen(policy: &Policy, req: &Request) -> Passage {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Passage::On;
    };
    match policy.judge(origin, req.headers()) {
        Verdict::Own => Passage::On,
        Verdict::Listed(origin) => {
            let preflight = req.method() == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
            if preflight {
                let mut response = preflight_answer(req.headers());
                allow(&mut response, origin);
                Passage::Answered(response)
            } else {
                Passage::Listed(origin)
            }
        }
        Verdict::Foreign(_) if matches!(*req.method(), Method::GET | Method::HEAD) => Passage::On,
        Verdict::Foreign(origin) => Passage::Answered(super::refusal(
            req,
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from the web page at {origin:?} are refused; list its origin in FLUX_CORS_ORIGINS to allow it"
                ),
            ),
        )),
    }
}

/// The CORS headers that let a listed origin's page read `response`.
pub fn allow(response: &mut Response, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "x-flux-key, x-flux-keys, x-flux-model, x-flux-wait-ms, retry-after, x-goog-upload-url, x-goog-upload-status",
        ),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// 204 for a listed origin's preflight: GET and POST, with the headers it asked for.
fn preflight_answer(request: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        HeaderMap::from_iter([(header::HOST, HeaderValue::from_str(h).unwrap())])
    }

    fn verdict(policy: &Policy, origin: &str, host_header: &str) -> &'static str {
        match policy.judge(&HeaderValue::from_str(origin).unwrap(), &host(host_header)) {
            Verdict::Own => "own",
            Verdict::Listed(_) => "listed",
            Verdict::Foreign(_) => "foreign",
        }
    }

    #[test]
    fn only_the_own_origin_and_listed_ones_pass() {
        let policy = Policy {
            allowed: Allowed::parse("https://App.example.com:443, http://tools.local:3000")
                .unwrap(),
        };
        // (Origin, Host, verdict)
        let cases = [
            ("http://127.0.0.1:8000", "127.0.0.1:8000", "own"),
            ("http://localhost:8000", "localhost:8000", "own"),
            ("http://[::1]:8000", "[::1]:8000", "own"),
            // Reached at an address on the network (a bind on 0.0.0.0).
            ("http://10.1.2.3:8000", "10.1.2.3:8000", "own"),
            ("https://10.1.2.3:8443", "10.1.2.3:8443", "own"),
            ("https://app.example.com", "127.0.0.1:8000", "listed"),
            ("http://tools.local:3000", "127.0.0.1:8000", "listed"),
            // A name the operator serves the dashboard under is listed.
            ("http://tools.local:3000", "tools.local:3000", "listed"),
            ("https://evil.example", "127.0.0.1:8000", "foreign"),
            ("null", "127.0.0.1:8000", "foreign"),
            ("http://127.0.0.1:8001", "127.0.0.1:8000", "foreign"),
            // DNS rebinding: a page at evil.example whose name now resolves
            // to the service sends an Origin and a Host that agree.
            ("http://evil.example:8000", "evil.example:8000", "foreign"),
            (
                "http://localhost.evil.example:8000",
                "localhost.evil.example:8000",
                "foreign",
            ),
        ];
        for (origin, host, expected) in cases {
            assert_eq!(
                verdict(&policy, origin, host),
                expected,
                "{origin} at {host}"
            );
        }
    }

    #[test]
    fn the_list_takes_origins_or_a_star_and_nothing_else() {
        assert_eq!(Allowed::parse("").unwrap(), Allowed::default());
        assert!(Allowed::parse("*").unwrap().lists("https://any.example"));
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "ftp://x",
            "https://u:p@x",
        ] {
            assert!(Allowed::parse(bad).is_err(), "{bad}");
        }
    }
}
