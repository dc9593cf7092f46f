//! The one registration point of providers: which [`Provider`] speaks a deployment
//! kind's API. Adding a provider means its file or folder and one line in [`for_kind`].

use crate::request::{ClientRequest, Format};
use crate::upstream::{Provider, Upstream};
use crate::{anthropic, gemini, openai};
use bytes::Bytes;
use llmgw_core::config::ProviderKind;
use llmgw_core::error::ApiError;
use std::sync::Arc;

/// The provider for a deployment kind.
pub fn for_kind(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Openai | ProviderKind::Sglang => Arc::new(openai::OpenAi),
        ProviderKind::Azure => Arc::new(openai::Azure),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic),
        ProviderKind::Gemini => Arc::new(gemini::Gemini),
    }
}

/// Placeholder that `Router::new` refuses, so a config never half-works.
pub struct Unsupported(pub ProviderKind);

impl Provider for Unsupported {
    fn wire(&self, _: &Upstream, _: &ClientRequest) -> Format {
        Format::OpenAiChat
    }
    fn unsupported(&self) -> Option<String> {
        Some(format!(
            "provider {} is not supported by this build yet",
            self.0.as_str()
        ))
    }
    fn request(
        &self,
        _: &reqwest::Client,
        _: &Upstream,
        _: &ClientRequest,
        _: Bytes,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        Err(ApiError::internal(format!(
            "provider {} is not supported yet",
            self.0.as_str()
        )))
    }
}
