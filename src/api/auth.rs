//! Client authentication. With `FLUX_API_TOKENS` set, every route but
//! `/healthz`, `/readyz` and the dashboard's static page needs one of those tokens: `Authorization: Bearer`
//! anywhere, or `x-goog-api-key` / `?key=` on the Gemini-native routes (so an
//! SDK's "API key" can be the token). An upload's chunks need none: their
//! upload id, given only to a caller with a token, is their credential. The admin routes need `FLUX_ADMIN_TOKEN`
//! when that is set. Tokens are compared in constant time. The token a
//! request presented is passed on as its [`Caller`] (batches belong to it).

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};

/// The tokens clients present.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub api: Vec<String>,
    pub admin: Option<String>,
}

impl Tokens {
    pub fn open(&self) -> bool {
        self.api.is_empty() && self.admin.is_none()
    }
}

/// Who calls, as far as the tokens tell: the one-way id of the API token
/// presented (the hash keys get as their stable id; never the token's
/// text), or `None` when no API token is asked for. Every request carries
/// one, put there by [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

#[derive(PartialEq)]
enum Guarded {
    Open,
    Admin,
    GeminiNative,
    Other,
}

fn classify(method: &Method, path: &str) -> Guarded {
    match path {
        // The dashboard's page holds no data: it asks for a token when the
        // routes it reads (guarded like any other) want one.
        "/healthz" | "/readyz" | "/dashboard" => Guarded::Open,
        "/config" | "/refresh-policy" | "/policy/refresh" => Guarded::Admin,
        "/mode" if method == Method::POST => Guarded::Admin,
        p if p.starts_with("/keys/") => Guarded::Admin,
        p if p.starts_with("/v1beta/openai/") => Guarded::Other,
        p if [
            "/v1beta/models",
            "/v1/models",
            "/v1beta/files",
            "/v1/files",
            "/upload/",
            "/v1beta/batches",
            "/v1/batches",
        ]
        .iter()
        .any(|native| p.starts_with(native)) =>
        {
            Guarded::GeminiNative
        }
        _ => Guarded::Other,
    }
}

/// Equal in time that does not depend on where the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token of `Authorization: Bearer <token>`; the scheme's case does not
/// matter (RFC 9110, 11.1).
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The Gemini-native ways to present a key: the header, then `?key=`.
pub fn goog_key(req: &Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.to_string());
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.uri().query()?).ok()?;
    pairs.into_iter().find(|(k, _)| k == "key").map(|(_, v)| v)
}

/// Marks `req` with its [`Caller`] and lets it on, or refuses it 401 (see
/// the module doc). One of the steps of [`super::gate`], which answers the
/// refusal in the envelope of the request's surface.
pub fn check(tokens: &Tokens, req: &mut Request) -> Result<(), ApiError> {
    req.extensions_mut().insert(Caller::default());
    if tokens.open() {
        return Ok(());
    }
    let class = classify(req.method(), req.uri().path());
    if class == Guarded::Open || super::files::is_upload_chunk(req.uri().path(), req.uri().query())
    {
        return Ok(());
    }
    let mut presented: Vec<String> = bearer(req).map(str::to_string).into_iter().collect();
    if class == Guarded::GeminiNative {
        presented.extend(goog_key(req));
    }
    // The anthropic SDK's own header, on its routes and on the model list.
    if super::anthropic::is_anthropic(req.uri().path()) || req.uri().path() == "/v1/models" {
        let x_api_key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
        presented.extend(x_api_key.map(str::to_string));
    }
    let accepted: Vec<&str> = match (&class, &tokens.admin) {
        (Guarded::Admin, Some(admin)) => vec![admin.as_str()],
        _ => tokens.api.iter().map(String::as_str).collect(),
    };
    let matched = presented
        .iter()
        .find_map(|p| accepted.iter().find(|t| same(p, t)));
    if let Some(token) = matched.filter(|_| class != Guarded::Admin) {
        let id = crate::keys::ApiKey::new(*token).stable_id();
        req.extensions_mut().insert(Caller(Some(id)));
    }
    let allowed = accepted.is_empty() && class != Guarded::Admin || matched.is_some();
    if allowed {
        return Ok(());
    }
    let message = match (presented.is_empty(), class == Guarded::Admin) {
        (true, _) => {
            "a token is required: Authorization: Bearer <token> (or x-goog-api-key on the Gemini routes, x-api-key on /v1/messages)"
        }
        (false, true) => "this route needs the admin token",
        (false, false) => "the token is not valid",
    };
    Err(ApiError::new(StatusCode::UNAUTHORIZED, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified() {
        assert!(classify(&Method::GET, "/healthz") == Guarded::Open);
        assert!(classify(&Method::POST, "/mode") == Guarded::Admin);
        assert!(classify(&Method::GET, "/mode") == Guarded::Other);
        assert!(classify(&Method::POST, "/keys/1/disable") == Guarded::Admin);
        assert!(
            classify(&Method::POST, "/v1/models/gemini-2.5-flash:generateContent")
                == Guarded::GeminiNative
        );
        assert!(classify(&Method::POST, "/upload/v1beta/files") == Guarded::GeminiNative);
        assert!(classify(&Method::GET, "/v1/files/abc") == Guarded::GeminiNative);
        assert!(classify(&Method::GET, "/v1/batches/abc") == Guarded::GeminiNative);
        assert!(classify(&Method::GET, "/v1beta/batches") == Guarded::GeminiNative);
        assert!(classify(&Method::POST, "/v1beta/openai/chat/completions") == Guarded::Other);
        assert!(classify(&Method::POST, "/v1/chat/completions") == Guarded::Other);
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let with = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        for v in ["Bearer tok", "bearer tok", "BEARER  tok"] {
            assert_eq!(bearer(&with(v)), Some("tok"), "{v}");
        }
        assert_eq!(bearer(&with("Basic tok")), None);
        assert_eq!(bearer(&with("Bearertok")), None);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
