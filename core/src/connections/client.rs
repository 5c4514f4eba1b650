//! Talking to a provider: the HTTP client that carries oauth2's requests
//! (token, refresh, revocation) and OpenID Connect discovery.
//!
//! The protocol (PKCE, client authentication, error responses) is the
//! `oauth2` crate's; this module only sends its requests over a hyper-util
//! client with rustls (ring) — the same stack as the agent proxy — so the
//! workspace needs no second reqwest. Every exchange has a time limit,
//! responses are capped in size, redirects are never followed (a token
//! endpoint that redirects is refused), and response bodies never reach a
//! log or error message (they may hold tokens).

use super::config::{ClientAuth, Provider, check_url};
use crate::net::error::chain;
use crate::net::tls::{Trust, client_config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::time::Duration;

/// Connect limit per request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-exchange limit (connect, send, response head and body).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response accepted from a provider.
const MAX_RESPONSE: usize = 256 * 1024;

/// Why an HTTP exchange with a provider failed. Never carries a body.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {} s", EXCHANGE_TIMEOUT.as_secs())]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("the response could not be read: {0}")]
    Body(String),
    #[error("bad request: {0}")]
    Request(String),
}

/// A pooled client for one provider's endpoints.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// rustls (ring) with the system roots plus `extra_roots`.
    pub fn new(
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<HttpClient, String> {
        let tls = client_config(Trust::System(extra_roots)).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HttpClient { inner })
    }

    /// Sends one request (oauth2's request type) and reads the whole,
    /// size-capped response.
    pub async fn send(&self, req: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let req = axum::http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Connect(chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok(axum::http::Response::from_parts(parts, bytes.to_vec()))
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    /// `GET url` expecting a JSON document.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let req = axum::http::Request::get(url)
            .header(axum::http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let resp = self.send(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        serde_json::from_slice(resp.body()).map_err(|e| format!("not the expected JSON: {e}"))
    }
}

/// oauth2 sends its requests through this client. (A concrete type rather
/// than a closure: the futures must be `Send` for every borrow lifetime.)
impl<'c> oauth2::AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// The endpoints in use for a provider (configured, or discovered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
    pub revocation: Option<String>,
    pub client_auth: ClientAuth,
    /// The issuer, when known: authorization responses carrying `iss`
    /// (RFC 9207) must name it.
    pub issuer: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// The provider's endpoints: those configured, the rest from
/// `{issuer}/.well-known/openid-configuration`.
pub async fn endpoints(p: &Provider, http: &HttpClient) -> Result<Endpoints, String> {
    if !p.needs_discovery()
        && let (Some(a), Some(t)) = (&p.authorization_endpoint, &p.token_endpoint)
    {
        {
            return Ok(Endpoints {
                authorization: a.clone(),
                token: t.clone(),
                revocation: p.revocation_endpoint.clone(),
                client_auth: p.client_auth.unwrap_or(ClientAuth::Basic),
                issuer: p.issuer.clone(),
            });
        }
    }
    let issuer = p
        .issuer
        .as_deref()
        .ok_or_else(|| "no issuer to discover endpoints from".to_string())?;
    let doc: Discovery = http
        .get_json(&format!("{issuer}/.well-known/openid-configuration"))
        .await
        .map_err(|e| format!("OpenID Connect discovery at {issuer} failed: {e}"))?;
    from_discovery(p, issuer, doc)
}

fn from_discovery(p: &Provider, issuer: &str, doc: Discovery) -> Result<Endpoints, String> {
    // OIDC Discovery §4.3: the document must name the issuer it was
    // fetched for, or a mix-up is possible.
    if doc.issuer.trim_end_matches('/') != issuer {
        return Err(format!(
            "the discovery document names issuer `{}`, not `{issuer}`",
            doc.issuer
        ));
    }
    if let Some(methods) = &doc.code_challenge_methods_supported
        && !methods.iter().any(|m| m == "S256")
    {
        return Err("the provider does not support PKCE with S256".into());
    }
    let checked = |what: &str, u: &str| check_url(u).map_err(|e| format!("{what}: {e}"));
    let client_auth = p.client_auth.unwrap_or_else(|| {
        match &doc.token_endpoint_auth_methods_supported {
            // The default of the spec is client_secret_basic.
            Some(m)
                if !m.iter().any(|m| m == "client_secret_basic")
                    && m.iter().any(|m| m == "client_secret_post") =>
            {
                ClientAuth::Post
            }
            _ => ClientAuth::Basic,
        }
    });
    Ok(Endpoints {
        authorization: match &p.authorization_endpoint {
            Some(a) => a.clone(),
            None => checked("authorization_endpoint", &doc.authorization_endpoint)?,
        },
        token: match &p.token_endpoint {
            Some(t) => t.clone(),
            None => checked("token_endpoint", &doc.token_endpoint)?,
        },
        revocation: match (&p.revocation_endpoint, &doc.revocation_endpoint) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(r)) => Some(checked("revocation_endpoint", r)?),
            (None, None) => None,
        },
        client_auth,
        issuer: Some(issuer.to_string()),
    })
}

/// Extra fields of a token response that Latchkey reads.
#[derive(Clone, Default, Deserialize, serde::Serialize)]
pub struct ExtraFields {
    /// Returned by OpenID Connect providers. Not validated and not kept:
    /// Latchkey uses the access and refresh tokens, never the identity, so
    /// nothing depends on the ID token's claims (see docs/CONNECTIONS.md).
    #[serde(default, skip_serializing)]
    pub id_token: Option<String>,
    /// Non-standard, but sent by providers whose refresh tokens expire.
    #[serde(default)]
    pub refresh_token_expires_in: Option<u64>,
}

impl std::fmt::Debug for ExtraFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("refresh_token_expires_in", &self.refresh_token_expires_in)
            .finish()
    }
}

impl oauth2::ExtraTokenFields for ExtraFields {}

pub type TokenResponse = oauth2::StandardTokenResponse<ExtraFields, oauth2::basic::BasicTokenType>;

/// The oauth2 client type for one provider (token and authorization
/// endpoints set, revocation maybe).
pub type OAuthClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    TokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointMaybeSet,
    oauth2::EndpointSet,
>;

/// Builds the oauth2 client (cheap: URLs and strings).
pub fn oauth_client(
    p: &Provider,
    ep: &Endpoints,
    secret: Option<&crate::secrecy::SecretString>,
    redirect_uri: Option<&str>,
) -> Result<OAuthClient, String> {
    use crate::secrecy::ExposeSecret;
    let url = |what: &str, u: &str| format!("{what} `{u}` is not a valid URL");
    let mut c = oauth2::Client::new(oauth2::ClientId::new(p.client_id.clone()))
        .set_auth_uri(
            oauth2::AuthUrl::new(ep.authorization.clone())
                .map_err(|_| url("authorization endpoint", &ep.authorization))?,
        )
        .set_token_uri(
            oauth2::TokenUrl::new(ep.token.clone())
                .map_err(|_| url("token endpoint", &ep.token))?,
        )
        .set_revocation_url_option(
            ep.revocation
                .as_ref()
                .map(|r| {
                    oauth2::RevocationUrl::new(r.clone()).map_err(|_| url("revocation endpoint", r))
                })
                .transpose()?,
        )
        .set_auth_type(match ep.client_auth {
            ClientAuth::Basic => oauth2::AuthType::BasicAuth,
            ClientAuth::Post => oauth2::AuthType::RequestBody,
        });
    if let Some(s) = secret {
        c = c.set_client_secret(oauth2::ClientSecret::new(s.expose_secret().to_string()));
    }
    if let Some(r) = redirect_uri {
        c = c.set_redirect_uri(
            oauth2::RedirectUrl::new(r.to_string()).map_err(|_| url("redirect URI", r))?,
        );
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::config::{ConnectionSettings, resolve};

    fn provider(issuer: &str) -> Provider {
        let s = ConnectionSettings {
            issuer: Some(issuer.into()),
            client_id: Some("c".into()),
            ..Default::default()
        };
        resolve("idp", &s).expect("provider")
    }

    fn doc(json: serde_json::Value) -> Discovery {
        serde_json::from_value(json).expect("discovery json")
    }

    #[test]
    fn discovery_must_name_its_issuer_and_support_s256() {
        let p = provider("https://idp.example");
        let good = serde_json::json!({
            "issuer": "https://idp.example",
            "authorization_endpoint": "https://idp.example/auth",
            "token_endpoint": "https://idp.example/token",
            "revocation_endpoint": "https://idp.example/revoke",
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
        });
        let ep = from_discovery(&p, "https://idp.example", doc(good.clone())).expect("ok");
        assert_eq!(ep.token, "https://idp.example/token");
        assert_eq!(ep.client_auth, ClientAuth::Post);
        assert_eq!(ep.revocation.as_deref(), Some("https://idp.example/revoke"));

        let mut other = good.clone();
        other["issuer"] = "https://evil.example".into();
        assert!(from_discovery(&p, "https://idp.example", doc(other)).is_err());
        let mut plain = good.clone();
        plain["code_challenge_methods_supported"] = serde_json::json!(["plain"]);
        assert!(from_discovery(&p, "https://idp.example", doc(plain)).is_err());
        let mut http = good;
        http["token_endpoint"] = "http://idp.example/token".into();
        assert!(from_discovery(&p, "https://idp.example", doc(http)).is_err());
    }

    #[test]
    fn token_responses_parse_and_never_debug_secrets() {
        let r: TokenResponse = serde_json::from_value(serde_json::json!({
            "access_token": "AT-canary", "token_type": "Bearer", "expires_in": 10,
            "refresh_token": "RT-canary", "scope": "openid offline_access",
            "id_token": "ID-canary"
        }))
        .expect("parse");
        use oauth2::TokenResponse as _;
        assert_eq!(r.expires_in(), Some(Duration::from_secs(10)));
        assert_eq!(*r.token_type(), oauth2::basic::BasicTokenType::Bearer);
        let shown = format!("{r:?}");
        assert!(!shown.contains("canary"), "{shown}");
    }
}
