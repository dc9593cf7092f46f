//! What a translated request may carry: `drop_params` and the refusals that name the
//! client's parameter, embeddings' output format, tool-call checks, data URLs.

use super::*;

// ---------------------------------------------------------------------------------------
// Request helpers
// ---------------------------------------------------------------------------------------

/// The request body as a JSON object, owned so that strings can be moved, not copied.
pub fn body_object(req: &crate::request::ClientRequest) -> Result<Map<String, Value>, ApiError> {
    match req.json()? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request("request body must be a JSON object")),
    }
}

/// Applies `drop_params` to a parameter the provider cannot honour: dropped when the
/// deployment allows it, otherwise a 400 naming the parameter.
pub fn unsupported(dep: &Upstream, provider: &str, param: &str) -> Result<(), ApiError> {
    unsupported_all(dep, provider, &mut [param.to_string()])
}

/// [`unsupported`] for several parameters at once: the error names all of them (sorted).
pub fn unsupported_all(
    dep: &Upstream,
    provider: &str,
    params: &mut [String],
) -> Result<(), ApiError> {
    if params.is_empty() {
        return Ok(());
    }
    if dep.drop_params {
        tracing::debug!(deployment = %dep.id, params = ?params, "dropping parameters the provider does not support");
        return Ok(());
    }
    params.sort();
    let list = params
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let (noun, verb) = if params.len() == 1 {
        ("parameter", "is")
    } else {
        ("parameters", "are")
    };
    Err(ApiError::bad_request(format!(
        "{noun} {list} {verb} not supported by {provider} (deployment {}); remove it, or set \
         drop_params = true on the deployment to drop unsupported parameters",
        dep.id
    ))
    .with_param(params[0].clone())
    .with_code("unsupported_parameter"))
}

/// True when a parameter's value asks for nothing beyond the default (so dropping it
/// changes nothing): `null`, `n: 1`, zero penalties, `logprobs: false`, text format, …
pub fn is_default(param: &str, v: &Value) -> bool {
    match (param, v) {
        (_, Value::Null) => true,
        ("n", v) => v.as_u64() == Some(1),
        ("presence_penalty" | "frequency_penalty", v) => v.as_f64() == Some(0.0),
        ("logprobs" | "store", Value::Bool(b)) => !*b,
        ("parallel_tool_calls", Value::Bool(b)) => *b,
        ("logit_bias" | "metadata", Value::Object(m)) => m.is_empty(),
        ("response_format", Value::Object(m)) => {
            m.get("type").and_then(Value::as_str) == Some("text")
        }
        ("encoding_format", Value::String(s)) => s == "float",
        _ => false,
    }
}

/// OpenAI's `encoding_format` for embeddings: the vectors as JSON numbers, or as base64 of
/// their little-endian float32 bytes (what the OpenAI SDKs ask for unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbeddingFormat {
    #[default]
    Float,
    Base64,
}

impl EmbeddingFormat {
    /// An `encoding_format` value: absent or null is `float`; anything but `"float"` or
    /// `"base64"` is a 400, as OpenAI answers it.
    pub fn of_value(v: Option<&Value>) -> Result<Self, ApiError> {
        match v.and_then(|v| if v.is_null() { None } else { Some(v) }) {
            None => Ok(Self::Float),
            Some(Value::String(s)) if s == "float" => Ok(Self::Float),
            Some(Value::String(s)) if s == "base64" => Ok(Self::Base64),
            Some(_) => Err(invalid(
                "encoding_format",
                "expected \"float\" or \"base64\"",
            )),
        }
    }

    /// The format a request body asks for (only that field is read).
    pub fn of_request(body: &[u8]) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            encoding_format: Option<Value>,
        }
        let only: Only = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
        Self::of_value(only.encoding_format.as_ref())
    }

    /// One embedding, as the `embedding` value of OpenAI's response.
    pub fn encode(self, values: Vec<f64>) -> Value {
        match self {
            Self::Float => Value::from(values),
            Self::Base64 => {
                use base64::Engine as _;
                let bytes: Vec<u8> = values
                    .iter()
                    .flat_map(|v| (*v as f32).to_le_bytes())
                    .collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// One assistant `tool_calls` entry, checked: its id (when present), function name and
/// arguments as a JSON object.
pub struct CheckedCall<'a> {
    pub id: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    pub args: Box<RawValue>,
}

/// Checks message `i`'s `tool_calls` the same way for every provider; `require_id`
/// makes a missing `id` an error (checked first, as Anthropic needs it).
pub fn tool_calls<'a>(
    calls: &LaxList<Lax<InToolCall<'a>>>,
    i: usize,
    require_id: bool,
) -> Result<Vec<CheckedCall<'a>>, ApiError> {
    let calls = match calls {
        LaxList::List(c) => c,
        LaxList::Null => return Ok(Vec::new()),
        LaxList::Bad => {
            return Err(invalid(
                format!("messages[{i}].tool_calls"),
                "expected an array",
            ))
        }
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let param = |f: &str| format!("messages[{i}].tool_calls[{j}]{f}");
        let Some(call) = call.as_ref() else {
            return Err(invalid(param(""), "expected an object"));
        };
        let id = call.id.cow();
        if require_id && id.is_none() {
            return Err(invalid(param(".id"), "missing"));
        }
        let Some(f) = call.function.as_ref() else {
            return Err(invalid(param(".function"), "missing"));
        };
        let Some(name) = f.name.cow() else {
            return Err(invalid(param(".function.name"), "missing"));
        };
        let args =
            raw_arguments(f.arguments).map_err(|e| invalid(param(".function.arguments"), e))?;
        out.push(CheckedCall { id, name, args });
    }
    Ok(out)
}

/// A 400 for a malformed field, naming it.
pub fn invalid(param: impl Into<String>, what: impl std::fmt::Display) -> ApiError {
    let param = param.into();
    ApiError::bad_request(format!("invalid '{param}': {what}")).with_param(param)
}

/// A `data:` URL split into (media type, base64 payload).
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((if media.is_empty() { "image/png" } else { media }, data))
}

/// A MIME type guessed from a URL's file extension (images only).
pub fn mime_from_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".pdf") {
        "application/pdf"
    } else {
        "image/jpeg"
    }
}
