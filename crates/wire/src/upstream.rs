//! An upstream deployment as the wire formats see it: its static description from the
//! config ([`Upstream`]), the [`Provider`] that speaks its API and the
//! [`StreamTranslator`] a translated stream goes through. The router's `Upstream`
//! adds the live state (in-flight counts, cooldowns, load) around it.

use crate::request::{ClientRequest, Endpoint, Format};
use crate::upstream_error::{openai_style_error, UpstreamError};
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use llmgw_core::config::{ProviderKind, Secret};
use llmgw_core::error::ApiError;
use std::sync::{Arc, OnceLock};

/// What the wire formats need to know of one deployment: set from its `[[models]]`
/// entry, never changed after.
pub struct Upstream {
    /// Unique id: configured, or `<name>-<n>` (1-based within the group).
    pub id: String,
    pub group: String,
    pub kind: ProviderKind,
    /// The upstream's own model id.
    pub model: String,
    /// Base URL without a trailing slash.
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub max_tokens: Option<u64>,
    pub drop_params: bool,
    /// The upstream serves OpenAI's `/responses` itself (`/v1/responses` passes through).
    pub responses_api: bool,
    pub provider: Arc<dyn Provider>,
    /// `{api_base}/{endpoint}` parsed once, for OpenAI-compatible providers.
    urls: OnceLock<Option<[reqwest::Url; 4]>>,
}

impl Upstream {
    /// An upstream of `kind` serving `model` at `api_base`, spoken to by `provider`; no
    /// key, no `max_tokens`, `drop_params` off (set the public fields for the rest).
    pub fn new(
        id: &str,
        group: &str,
        kind: ProviderKind,
        model: &str,
        api_base: &str,
        provider: Arc<dyn Provider>,
    ) -> Upstream {
        Upstream {
            id: id.into(),
            group: group.into(),
            kind,
            model: model.into(),
            api_base: api_base.trim_end_matches('/').into(),
            api_key: None,
            api_version: None,
            max_tokens: None,
            drop_params: false,
            responses_api: false,
            provider,
            urls: OnceLock::new(),
        }
    }

    /// `api_base` as shown to people (errors, `/health`): credentials in it replaced.
    pub fn api_base_shown(&self) -> std::borrow::Cow<'_, str> {
        llmgw_core::redact::userinfo(&self.api_base)
    }

    /// `{api_base}/{endpoint path}` of an OpenAI-compatible upstream, parsed on first use
    /// and reused after (Anthropic's endpoints map to `chat/completions`, where they are
    /// translated to).
    pub fn endpoint_url(&self, endpoint: Endpoint) -> Option<reqwest::Url> {
        let urls = self.urls.get_or_init(|| {
            let parse =
                |e: Endpoint| reqwest::Url::parse(&format!("{}/{}", self.api_base, e.path())).ok();
            Some([
                parse(Endpoint::ChatCompletions)?,
                parse(Endpoint::Completions)?,
                parse(Endpoint::Embeddings)?,
                parse(Endpoint::Responses)?,
            ])
        });
        let i = match endpoint {
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::CountTokens => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
            Endpoint::Responses => 3,
        };
        urls.as_ref().map(|u| u[i].clone())
    }
}

/// One upstream API family: where a request goes and how its errors read. What body
/// it gets and how its answers are translated is decided by `convert` from
/// [`Provider::wire`] alone.
pub trait Provider: Send + Sync + 'static {
    /// The wire format `dep` speaks for a request of `req`'s chat format.
    fn wire(&self, dep: &Upstream, req: &ClientRequest) -> Format;

    /// The HTTP request (URL, headers) around `body` for one attempt against `dep`.
    fn request(
        &self,
        client: &reqwest::Client,
        dep: &Upstream,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError>;

    /// `Some(reason)` when this build cannot serve the provider (checked at startup).
    fn unsupported(&self) -> Option<String> {
        None
    }

    /// Classifies an error response and builds the client's error from it.
    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        openai_style_error(status, headers, body)
    }
}

/// Converts an upstream event stream to the client's SSE format, chunk by chunk.
pub trait StreamTranslator: Send {
    /// Feeds raw upstream bytes; appends complete client SSE events to `out`.
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamError>;
    /// Called at the end of the upstream stream; appends any final events.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamError>;
}

/// A header value holding a key: marked sensitive so that it never shows up in debug
/// output of the request; an invalid value is reported without echoing it.
pub fn secret_header(
    dep: &Upstream,
    value: &str,
) -> Result<reqwest::header::HeaderValue, ApiError> {
    let mut v = reqwest::header::HeaderValue::try_from(value).map_err(|_| {
        ApiError::internal(format!(
            "api_key of deployment {} is not a valid header value",
            dep.id
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}
