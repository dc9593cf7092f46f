//! The OpenAI chat completions wire format (OpenAI, SGLang, vLLM, Azure): adapters to and
//! from the hub, one per direction. An OpenAI client of an OpenAI-compatible deployment
//! never comes here (its bytes pass through).

pub mod request;
pub mod response;
pub mod stream;
