//! The OpenAI chat request as the decoders borrow it: messages, content parts, tools,
//! tool choice, and the body with its known keys.

use super::*;

/// One element of a content array: an object, a bare string, or something else.
#[derive(Debug)]
pub enum Part<'a> {
    Obj(PartObj<'a>),
    Text(Cow<'a, str>),
    Bad,
}

impl<'de: 'a, 'a> Deserialize<'de> for Part<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                PartObj::deserialize(de::value::MapAccessDeserializer::new(map)).map(Part::Obj)
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Part::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Part::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Part::Text(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Part::Bad)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Part::Bad)
            }
            lenient_scalars!(Part::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| Part::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A content part object (`text`, `refusal` or `image_url`).
#[derive(Debug, Default, Deserialize)]
pub struct PartObj<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: LStr<'a>,
    #[serde(default, borrow)]
    pub text: LStr<'a>,
    #[serde(default, borrow)]
    pub refusal: LStr<'a>,
    #[serde(default, borrow)]
    pub image_url: ImageUrl<'a>,
    #[serde(default, borrow)]
    pub cache_control: MaybeRaw<'a>,
}

impl PartObj<'_> {
    /// The part's `type`; a missing or non-string type counts as text.
    pub fn kind(&self) -> &str {
        self.kind.as_str().unwrap_or("text")
    }

    /// `text`, else `refusal` (assistant content).
    pub fn text_or_refusal(&self) -> Option<&str> {
        self.text.as_str().or(self.refusal.as_str())
    }
}

/// `image_url`: `{"url": …}` or a bare string.
#[derive(Debug, Default)]
pub struct ImageUrl<'a>(pub Option<Cow<'a, str>>);

#[derive(Deserialize)]
pub(crate) struct UrlObj<'a> {
    #[serde(default, borrow)]
    url: LStr<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ImageUrl<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match LStrOr::<UrlObj<'a>>::deserialize(d)? {
            LStrOr::Str(s) => ImageUrl(Some(s)),
            LStrOr::Obj(UrlObj { url: LStr::Str(s) }) => ImageUrl(Some(s)),
            _ => ImageUrl(None),
        })
    }
}

/// One OpenAI chat message.
#[derive(Debug, Default, Deserialize)]
pub struct InMessage<'a> {
    #[serde(default, borrow)]
    pub role: LStr<'a>,
    #[serde(default, borrow)]
    pub content: Content<'a>,
    #[serde(default, borrow)]
    pub tool_calls: LaxList<Lax<InToolCall<'a>>>,
    #[serde(default, borrow)]
    pub tool_call_id: LStr<'a>,
    #[serde(default, borrow)]
    pub name: LStr<'a>,
}

/// An assistant message's tool call.
#[derive(Debug, Default, Deserialize)]
pub struct InToolCall<'a> {
    #[serde(default, borrow)]
    pub id: LStr<'a>,
    #[serde(default, borrow)]
    pub function: Lax<InFunctionCall<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InFunctionCall<'a> {
    #[serde(default, borrow)]
    pub name: LStr<'a>,
    #[serde(default, borrow)]
    pub arguments: MaybeRaw<'a>,
}

/// One entry of `tools`.
#[derive(Debug, Default, Deserialize)]
pub struct InTool<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: LStr<'a>,
    #[serde(default, borrow)]
    pub function: Lax<InFunction<'a>>,
    #[serde(default, borrow)]
    pub cache_control: MaybeRaw<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InFunction<'a> {
    #[serde(default, borrow)]
    pub name: LStr<'a>,
    #[serde(default, borrow)]
    pub description: LStr<'a>,
    #[serde(default, borrow)]
    pub parameters: MaybeRaw<'a>,
    #[serde(default, borrow)]
    pub strict: MaybeRaw<'a>,
}

/// The key names a [`Body`] reads typed: its list of turns and its tools.
pub trait BodyKeys {
    /// `messages` (chat, Anthropic) or `input` (Responses).
    const LIST: &'static str;
    const TOOLS: &'static str = "tools";
}

/// A request body: the list of turns (`L`) and the tools (`T`) typed, every other
/// top-level parameter as (name, raw value) in body order. A repeated key keeps its last
/// value, as a JSON object map would.
pub struct Body<'a, K, L, T> {
    /// `None` when absent.
    pub list: Option<L>,
    /// `None` when absent.
    pub tools: Option<T>,
    pub params: Vec<(Cow<'a, str>, &'a RawValue)>,
    keys: std::marker::PhantomData<K>,
}

impl<K, L, T> Default for Body<'_, K, L, T> {
    fn default() -> Self {
        Body {
            list: None,
            tools: None,
            params: Vec::new(),
            keys: std::marker::PhantomData,
        }
    }
}

pub(crate) struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match LStr::deserialize(d)? {
            LStr::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("expected a string key")),
        }
    }
}

impl<'de: 'a, 'a, K: BodyKeys, L: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de>
    for Body<'a, K, L, T>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K, L, T>(std::marker::PhantomData<(K, L, T)>);
        impl<'de, K: BodyKeys, L: Deserialize<'de>, T: Deserialize<'de>> Visitor<'de> for V<K, L, T> {
            type Value = Body<'de, K, L, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut body = Body {
                    params: Vec::with_capacity(16),
                    ..Body::default()
                };
                while let Some(Key(k)) = map.next_key()? {
                    if k == K::LIST {
                        body.list = Some(map.next_value()?);
                    } else if k == K::TOOLS {
                        body.tools = Some(map.next_value()?);
                    } else {
                        let v: &'de RawValue = map.next_value()?;
                        match body.params.iter_mut().find(|(n, _)| *n == k) {
                            Some(slot) => slot.1 = v,
                            None => body.params.push((k, v)),
                        }
                    }
                }
                Ok(body)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a, K, L, T> Body<'a, K, L, T> {
    /// Removes a parameter, returning its raw value.
    pub fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        let at = self.params.iter().position(|(k, _)| k == name)?;
        Some(self.params.remove(at).1)
    }
}

impl<'a, K: BodyKeys, L: Deserialize<'a>, T: Deserialize<'a>> Body<'a, K, L, T> {
    /// Reads a body from the client's bytes.
    pub fn parse(req: &'a crate::request::ClientRequest) -> Result<Self, ApiError> {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
    }
}

/// Chat completions' keys.
pub struct ChatKeys;

impl BodyKeys for ChatKeys {
    const LIST: &'static str = "messages";
}

/// A chat completions body: `messages` and `tools` typed.
pub type ChatBody<'a> = Body<'a, ChatKeys, LaxList<Lax<InMessage<'a>>>, LaxList<Lax<InTool<'a>>>>;

impl<'a, K, L, T> Body<'a, K, LaxList<L>, T> {
    /// The list of turns (each element checked by the caller, in order); a 400 naming
    /// `name` when it is missing or not an array.
    pub fn required_list(&mut self, name: &str) -> Result<Vec<L>, ApiError> {
        match self.list.take() {
            None => Err(invalid(name, "this parameter is required")),
            Some(LaxList::List(l)) => Ok(l),
            Some(_) => Err(invalid(name, "expected an array of messages")),
        }
    }
}

impl<'a> ChatBody<'a> {
    /// The messages array (each element checked by the caller, in order).
    pub fn messages(&mut self) -> Result<Vec<Lax<InMessage<'a>>>, ApiError> {
        self.required_list("messages")
    }
}

/// [`is_default`] for a raw value (only called for parameters a provider does not map).
pub fn raw_is_default(param: &str, raw: &RawValue) -> bool {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => is_default(param, &v),
        Err(_) => false,
    }
}

/// `stop` as a list of raw JSON strings: a string or an array of strings.
pub fn raw_stop_list(raw: &RawValue) -> Result<Vec<&RawValue>, ApiError> {
    let bad = || invalid("stop", "expected a string or an array of strings");
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(vec![raw]),
        Some(b'n') => Ok(Vec::new()),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            if items.iter().all(|s| s.get().starts_with('"')) {
                Ok(items)
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// `max_completion_tokens`, else `max_tokens`, as a positive integer.
pub fn raw_max_tokens<K, L, T>(body: &mut Body<'_, K, L, T>) -> Result<Option<u64>, ApiError> {
    let a = body.take("max_completion_tokens");
    let b = body.take("max_tokens");
    for (name, v) in [("max_completion_tokens", a), ("max_tokens", b)] {
        match v {
            None => {}
            Some(v) if is_null(v) => {}
            Some(v) => {
                return serde_json::from_str::<u64>(v.get())
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| invalid(name, "expected a positive integer"))
            }
        }
    }
    Ok(None)
}

/// The text of a string-or-parts content value (parts other than text are errors).
pub fn content_str<'a>(v: &Content<'a>, param: &str) -> Result<Cow<'a, str>, ApiError> {
    match v {
        Content::Text(s) => Ok(s.clone()),
        Content::Null => Ok(Cow::Borrowed("")),
        Content::Parts(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Part::Obj(o) => match o.text.as_str() {
                        Some(t) => out.push_str(t),
                        None => return Err(invalid(param, "only text parts are allowed here")),
                    },
                    Part::Text(t) => out.push_str(t),
                    Part::Bad => return Err(invalid(param, "expected text parts")),
                }
            }
            Ok(Cow::Owned(out))
        }
        Content::Bad => Err(invalid(param, "expected a string or an array of parts")),
    }
}

/// A tool call's `arguments` (a JSON string, an object or absent) as a JSON object.
pub fn raw_arguments(v: MaybeRaw<'_>) -> Result<Box<RawValue>, String> {
    let empty = || RawValue::from_string("{}".to_string()).map_err(|e| e.to_string());
    let Some(raw) = v.0 else {
        return empty();
    };
    match raw.get().as_bytes().first() {
        Some(b'n') => empty(),
        Some(b'{') => Ok(raw.to_owned()),
        Some(b'"') => {
            let s = raw_str(raw).ok_or_else(|| "expected a JSON string".to_string())?;
            if s.trim().is_empty() {
                return empty();
            }
            let parsed: &RawValue =
                serde_json::from_str(&s).map_err(|e| format!("not valid JSON ({e})"))?;
            if is_object(parsed) {
                Ok(parsed.to_owned())
            } else {
                Err("the arguments must encode a JSON object".into())
            }
        }
        _ => Err("expected a JSON string".into()),
    }
}

/// `tool_choice`: a string or `{"type": "function", "function": {"name": …}}`.
pub enum ToolChoiceIn<'a> {
    Auto,
    None,
    Required,
    Function(Cow<'a, str>),
}

#[derive(Deserialize)]
pub(crate) struct ChoiceObj<'a> {
    #[serde(default, borrow)]
    function: Lax<ChoiceFn<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChoiceFn<'a> {
    #[serde(default, borrow)]
    name: LStr<'a>,
}

/// Reads `tool_choice`; `None` for `null`.
pub fn tool_choice(raw: &RawValue) -> Result<Option<ToolChoiceIn<'_>>, ApiError> {
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'"') => match raw_str(raw).as_deref() {
            Some("auto") => Ok(Some(ToolChoiceIn::Auto)),
            Some("none") => Ok(Some(ToolChoiceIn::None)),
            Some("required") => Ok(Some(ToolChoiceIn::Required)),
            _ => Err(invalid(
                "tool_choice",
                "expected \"auto\", \"none\", \"required\" or a function",
            )),
        },
        Some(b'{') => {
            let o: ChoiceObj<'_> = serde_json::from_str(raw.get()).map_err(|_| {
                invalid(
                    "tool_choice",
                    "expected {\"type\":\"function\",\"function\":{\"name\":...}}",
                )
            })?;
            match o.function {
                Lax::Ok(ChoiceFn { name: LStr::Str(n) }) => Ok(Some(ToolChoiceIn::Function(n))),
                _ => Err(invalid(
                    "tool_choice",
                    "expected {\"type\":\"function\",\"function\":{\"name\":...}}",
                )),
            }
        }
        _ => Err(invalid("tool_choice", "expected a string or an object")),
    }
}

/// Writes a value as JSON into a new buffer of about `hint` bytes.
pub fn to_body(value: &impl Serialize, hint: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(hint);
    serde_json::to_writer(&mut out, value)
        .map_err(|e| ApiError::internal(format!("serialising: {e}")))?;
    Ok(out)
}
