//! The one place that decides, for every provider, between passing the client's bytes
//! through (the model id spliced) and translating through the [`crate::hub`]: the body
//! of an attempt, a complete answer, a stream.

use crate::hub::{self, Target};
use crate::request::{ClientRequest, Endpoint, Format};
use crate::upstream::{StreamTranslator, Upstream};
use crate::{anthropic, chat, gemini, responses};
use bytes::Bytes;
use llmgw_core::config::ProviderKind;
use llmgw_core::error::ApiError;
use std::sync::Arc;

/// The request body for `dep`: the client's bytes with the model id spliced, or
/// translated (see [`translates`]).
pub fn body(dep: &Upstream, req: &ClientRequest) -> Result<Bytes, ApiError> {
    if req.endpoint == Endpoint::Embeddings && dep.kind == ProviderKind::Gemini {
        return gemini::translate_embeddings_request(dep, req).map(Bytes::from);
    }
    chat_body(dep, req, dep.provider.wire(dep, req))
}

/// A complete successful non-streaming body in the client's format (the body itself
/// when no translation is needed).
pub fn translate_body(dep: &Upstream, req: &ClientRequest, body: Bytes) -> Result<Bytes, ApiError> {
    if req.endpoint == Endpoint::Embeddings && dep.kind == ProviderKind::Gemini {
        return gemini::translate_embeddings_response(
            &dep.model,
            &body,
            crate::translate::EmbeddingFormat::of_request(&req.body)?,
        );
    }
    translate_response(dep.provider.wire(dep, req), dep, req, body)
}

/// The whole HTTP request of one attempt against `dep`: its body, and the provider's
/// URL and headers around it.
pub fn request(
    client: &reqwest::Client,
    dep: &Upstream,
    req: &ClientRequest,
) -> Result<reqwest::RequestBuilder, ApiError> {
    let body = body(dep, req)?;
    dep.provider.request(client, dep, req, body)
}

/// A converter for a successful streaming body; `None` when it passes through.
pub fn translator(dep: &Upstream, req: &ClientRequest) -> Option<Box<dyn StreamTranslator>> {
    stream_translator(dep.provider.wire(dep, req), dep, req)
}

/// True when `req` reaches `dep` in the client's own format (bytes pass through). A
/// Responses request continuing a stored response passes through only to the deployment
/// that holds the whole chain; another Responses deployment gets the conversation
/// rebuilt ([`responses::stored::rewrite`]).
pub fn passthrough(dep: &Upstream, req: &ClientRequest) -> bool {
    match req.endpoint.chat_format() {
        Some(f) => {
            f == dep.provider.wire(dep, req)
                && req
                    .prepared
                    .as_ref()
                    .is_none_or(|p| p.chain_lives_at(&dep.id))
        }
        // Completions, embeddings and token counts are never translated through the hub.
        None => true,
    }
}

/// True when `dep`'s body for `req` is translated rather than spliced.
pub fn translates(dep: &Upstream, req: &ClientRequest) -> bool {
    !passthrough(dep, req)
        || (req.endpoint == Endpoint::Embeddings && dep.kind == ProviderKind::Gemini)
}

/// The body for one attempt. Translating a body larger than
/// [`crate::request::PARSE_INLINE_MAX`] runs on the low-priority pool (`heavy`), like
/// parsing it did, so that a long conversation never holds an async worker.
/// `D` is whatever holds the upstream (the router's deployment), shared with the pool.
pub async fn attempt_body<D>(dep: &Arc<D>, req: &ClientRequest) -> Result<Bytes, ApiError>
where
    D: std::ops::Deref<Target = Upstream> + Send + Sync + 'static,
{
    if req.body.len() <= crate::request::PARSE_INLINE_MAX || !translates(dep, req) {
        return body(dep, req);
    }
    let (d, r) = (Arc::clone(dep), req.clone());
    llmgw_core::heavy::run(move || body(&d, &r))
        .await
        .unwrap_or_else(|busy| {
            Err(ApiError::unavailable(format!(
                "{busy} (translating a request over {} KiB waits in a short queue); retry in \
                 a moment",
                crate::request::PARSE_INLINE_MAX / 1024
            ))
            .with_code("server_busy")
            .with_retry_after(1))
        })
}

/// The body of a chat request for an upstream speaking `wire`: the client's bytes with
/// the model id spliced when the formats match, else translated through the hub.
pub fn chat_body(dep: &Upstream, req: &ClientRequest, wire: Format) -> Result<Bytes, ApiError> {
    let Some(from) = req.endpoint.chat_format() else {
        return Ok(req.body_for_model(&dep.model));
    };
    if from == wire {
        if !passthrough(dep, req) {
            return responses::stored::rewrite(req, &dep.model);
        }
        return Ok(req.body_for_model(&dep.model));
    }
    let target = Target { dep, format: wire };
    let hub = match from {
        Format::OpenAiChat => chat::request::decode(req, &target)?,
        Format::Anthropic => anthropic::request::decode(req, &target)?,
        Format::Responses => responses::request::decode(req, &target)?,
        Format::Gemini => return Err(no_translation(from, wire)),
    };
    let hint = req.body.len();
    let body = match wire {
        Format::OpenAiChat => chat::request::encode(&hub, &target, hint)?,
        Format::Anthropic => anthropic::request::encode(&hub, &target, hint)?,
        Format::Gemini => gemini::request::encode(&hub, &target, hint)?,
        Format::Responses => return Err(no_translation(from, wire)),
    };
    Ok(Bytes::from(body))
}

fn no_translation(from: Format, to: Format) -> ApiError {
    ApiError::internal(format!(
        "llmgw cannot translate {} requests to {}",
        from.name(),
        to.name()
    ))
}

/// A complete answer from an upstream speaking `wire`, in the client's format.
pub fn translate_response(
    wire: Format,
    dep: &Upstream,
    req: &ClientRequest,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    let Some(to) = req.endpoint.chat_format().filter(|&f| f != wire) else {
        return Ok(body);
    };
    let name = dep.kind.as_str();
    let hub = match wire {
        Format::OpenAiChat => chat::response::decode(&body, name)?,
        Format::Anthropic => anthropic::response::decode(&body)?,
        Format::Gemini => gemini::response::decode(&dep.model, &body)?,
        Format::Responses => return Err(no_translation(wire, to)),
    };
    match to {
        Format::OpenAiChat => chat::response::encode(hub),
        Format::Anthropic => anthropic::response::encode(&hub, name),
        Format::Responses => responses::response::encode(&hub, req, name),
        Format::Gemini => Err(no_translation(wire, to)),
    }
}

/// A translator for a stream from an upstream speaking `wire` to the client's format;
/// `None` when the formats match.
pub fn stream_translator(
    wire: Format,
    dep: &Upstream,
    req: &ClientRequest,
) -> Option<Box<dyn StreamTranslator>> {
    let to = req.endpoint.chat_format().filter(|&f| f != wire)?;
    let dec: Box<dyn hub::Decoder> = match wire {
        Format::OpenAiChat => Box::new(chat::stream::ChatDecoder::new(dep.kind.as_str())),
        Format::Anthropic => Box::<anthropic::stream::AnthropicDecoder>::default(),
        Format::Gemini => Box::<gemini::stream::GeminiDecoder>::default(),
        Format::Responses => return None,
    };
    let enc: Box<dyn hub::Encoder> = match to {
        Format::OpenAiChat => Box::new(chat::stream::ChatEncoder::new(
            dep.model.clone(),
            req.include_usage,
        )),
        Format::Anthropic => Box::new(anthropic::stream::AnthropicEncoder::new(dep.model.clone())),
        Format::Responses => Box::new(responses::stream::ResponsesEncoder::new(
            dep.model.clone(),
            req,
        )),
        Format::Gemini => return None,
    };
    Some(Box::new(hub::Translate { dec, enc }))
}
