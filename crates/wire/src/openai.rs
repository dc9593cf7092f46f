//! OpenAI and everything that speaks its API (SGLang, vLLM), plus Azure OpenAI, whose
//! wire format is the same with a different URL scheme and key header.

use crate::hub::Format;
use crate::request::{ClientRequest, Endpoint};
use crate::upstream::Provider;
use crate::upstream::Upstream;
use bytes::Bytes;
use llmgw_core::error::ApiError;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

/// `POST {api_base}/{endpoint}` with `Authorization: Bearer`.
pub struct OpenAi;

/// What an OpenAI-compatible upstream is asked: the client's endpoint, or for Anthropic
/// and (unless the deployment has it) Responses clients, chat completions.
fn upstream_endpoint(dep: &Upstream, req: &ClientRequest) -> Result<Endpoint, ApiError> {
    match req.endpoint {
        Endpoint::CountTokens => Err(ApiError::bad_request(format!(
            "deployment {} ({}) cannot count tokens",
            dep.id,
            dep.kind.as_str()
        ))
        .with_code("unsupported_endpoint")),
        Endpoint::Responses if dep.responses_api => Ok(Endpoint::Responses),
        Endpoint::Messages | Endpoint::Responses => Ok(Endpoint::ChatCompletions),
        e => Ok(e),
    }
}

/// OpenAI-compatible upstreams speak chat completions, and Responses when they have it.
fn wire(dep: &Upstream, req: &ClientRequest) -> Format {
    if req.endpoint == Endpoint::Responses && dep.responses_api {
        Format::Responses
    } else {
        Format::OpenAiChat
    }
}

impl Provider for OpenAi {
    fn wire(&self, dep: &Upstream, req: &ClientRequest) -> Format {
        wire(dep, req)
    }

    fn request(
        &self,
        client: &reqwest::Client,
        dep: &Upstream,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let url = dep
            .endpoint_url(upstream_endpoint(dep, req)?)
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "api_base of deployment {} is not a valid URL",
                    dep.id
                ))
            })?;
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(key) = &dep.api_key {
            let v = crate::upstream::secret_header(dep, &format!("Bearer {}", key.expose()))?;
            rb = rb.header(AUTHORIZATION, v);
        }
        Ok(rb)
    }
}

/// The Azure OpenAI data-plane inference `api-version` used when a deployment sets none
/// (the latest GA release).
pub const AZURE_API_VERSION: &str = "2024-10-21";

/// Azure OpenAI: `{api_base}/openai/deployments/{model}/{endpoint}?api-version=…`,
/// key in `api-key`; `model` is the Azure deployment name.
pub struct Azure;

impl Provider for Azure {
    fn wire(&self, _: &Upstream, _: &ClientRequest) -> Format {
        Format::OpenAiChat
    }

    fn request(
        &self,
        client: &reqwest::Client,
        dep: &Upstream,
        req: &ClientRequest,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let version = dep.api_version.as_deref().unwrap_or(AZURE_API_VERSION);
        // The portal shows both `https://x.openai.azure.com/` and `…/openai/`.
        let base = dep
            .api_base
            .strip_suffix("/openai")
            .unwrap_or(&dep.api_base);
        let endpoint = match upstream_endpoint(dep, req)? {
            // Azure's Responses API lives elsewhere; it gets chat completions.
            Endpoint::Responses => Endpoint::ChatCompletions,
            e => e,
        };
        let url = format!(
            "{}/openai/deployments/{}/{}?api-version={}",
            base,
            dep.model,
            endpoint.path(),
            version
        );
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(key) = &dep.api_key {
            let v = crate::upstream::secret_header(dep, key.expose())?;
            rb = rb.header("api-key", v);
        }
        Ok(rb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Endpoint;
    use crate::translate::testing::{client, deployment, request};
    use llmgw_core::config::ProviderKind;
    use serde_json::json;

    #[test]
    fn azure_url_version_and_key_header() {
        let mut d = deployment(ProviderKind::Azure, "my-gpt4o", false);
        d.api_base = "https://res.openai.azure.com".into();
        let req = request(
            Endpoint::ChatCompletions,
            json!({"model": "group", "messages": [{"role": "user", "content": "hi"}]}),
        );
        let r = crate::convert::request(&client(), &d, &req)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "https://res.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(r.headers()["api-key"], "sk-test-secret");
        assert!(r.headers()["api-key"].is_sensitive());
        assert!(r.headers().get("authorization").is_none());
        assert!(!r.url().as_str().contains("sk-test"));
        // The body is OpenAI's, with the deployment name as model.
        let body: serde_json::Value =
            serde_json::from_slice(r.body().unwrap().as_bytes().unwrap()).unwrap();
        assert_eq!(body["model"], "my-gpt4o");
        assert_eq!(body["messages"][0]["content"], "hi");

        d.api_version = Some("2025-01-01-preview".into());
        d.api_base = "https://res.openai.azure.com/openai".into();
        let emb = request(
            Endpoint::Embeddings,
            json!({"model": "group", "input": "x"}),
        );
        let r = crate::convert::request(&client(), &d, &emb)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "https://res.openai.azure.com/openai/deployments/my-gpt4o/embeddings?api-version=2025-01-01-preview"
        );
        assert!(crate::convert::passthrough(&d, &emb));
    }

    #[test]
    fn azure_errors_classified() {
        use axum::http::{HeaderMap, StatusCode};
        use llmgw_core::config::ErrorClass;
        let body = br#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        let e = Azure.error(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        assert_eq!(e.class, ErrorClass::ContentPolicy);
        let body = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded call rate limit."}}"#;
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let e = Azure.error(StatusCode::TOO_MANY_REQUESTS, &h, body);
        assert_eq!(e.class, ErrorClass::RateLimit);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
    }

    #[test]
    fn openai_bearer_key_is_sensitive() {
        let d = deployment(ProviderKind::Openai, "gpt-4o", false);
        let req = request(
            Endpoint::ChatCompletions,
            json!({"model": "gpt-4o", "messages": []}),
        );
        let r = crate::convert::request(&client(), &d, &req)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(r.url().as_str(), "http://127.0.0.1:9/v1/chat/completions");
        assert!(r.headers()["authorization"].is_sensitive());
    }
}
