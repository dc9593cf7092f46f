//! OpenAI and everything that speaks its API (SGLang, vLLM), plus Azure OpenAI, whose
//! wire format is the same with a different URL scheme and key header.

use super::Provider;
use crate::error::ApiError;
use crate::request::ClientRequest;
use crate::router::Deployment;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

/// `POST {api_base}/{endpoint}` with `Authorization: Bearer`.
pub struct OpenAi;

impl Provider for OpenAi {
    fn build(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let url = format!("{}/{}", dep.api_base, req.endpoint.path());
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(req.body_for_model(&dep.model));
        if let Some(key) = &dep.api_key {
            let mut v =
                HeaderValue::try_from(format!("Bearer {}", key.expose())).map_err(|_| {
                    ApiError::internal(format!(
                        "api_key of deployment {} is not a valid header value",
                        dep.id
                    ))
                })?;
            v.set_sensitive(true);
            rb = rb.header(AUTHORIZATION, v);
        }
        Ok(rb)
    }
}

/// Azure OpenAI: `{api_base}/openai/deployments/{model}/{endpoint}?api-version=…`,
/// key in `api-key`.
pub struct Azure;

impl Provider for Azure {
    fn build(
        &self,
        client: &reqwest::Client,
        dep: &Deployment,
        req: &ClientRequest,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let version = dep.api_version.as_deref().unwrap_or("2024-10-21");
        let url = format!(
            "{}/openai/deployments/{}/{}?api-version={}",
            dep.api_base,
            dep.model,
            req.endpoint.path(),
            version
        );
        let mut rb = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(req.body_for_model(&dep.model));
        if let Some(key) = &dep.api_key {
            let mut v = HeaderValue::try_from(key.expose()).map_err(|_| {
                ApiError::internal(format!(
                    "api_key of deployment {} is not a valid header value",
                    dep.id
                ))
            })?;
            v.set_sensitive(true);
            rb = rb.header("api-key", v);
        }
        Ok(rb)
    }
}
