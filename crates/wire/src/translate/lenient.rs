//! Lenient borrowed JSON types: strings, lists, booleans and values that accept what
//! clients really send (a number for a string, a lone value for a list) without building a
//! `serde_json::Value`.

use super::*;

// ---------------------------------------------------------------------------------------
// OpenAI request shapes (borrowed, lenient)
// ---------------------------------------------------------------------------------------
//
// The chat request is read once, straight from the client's bytes, into these types:
// strings borrow from the body unless they contain escapes, and opaque JSON (schemas,
// `cache_control`, sampling values) stays a `&RawValue` that is copied verbatim into the
// upstream body. The types are lenient: a field of the wrong JSON type does not fail the
// parse but becomes a "bad" variant, so that the providers can name the offending field
// in a 400 exactly as they validate it. Only malformed JSON fails the parse itself.

/// A JSON string borrowed from the body where possible; `Null` when absent or `null`,
/// `Bad` for any other JSON type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum LStr<'a> {
    #[default]
    Null,
    Str(Cow<'a, str>),
    Bad,
}

impl<'a> LStr<'a> {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            LStr::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string with the body's lifetime (a copy only when it had escapes).
    pub fn cow(&self) -> Option<Cow<'a, str>> {
        match self {
            LStr::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Consumes whatever value the visitor was handed.
pub(crate) fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

pub(crate) fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the non-matching `visit_*` methods of a lenient visitor as `$bad`.
macro_rules! lenient_scalars {
    ($bad:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($bad)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($bad)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($bad)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($bad)
        }
    };
}
pub(crate) use lenient_scalars;

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(LStr::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LStr::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(LStr::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStr::Null)
            }
            lenient_scalars!(LStr::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LStr::Bad)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LStr::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object read as `T`; `Null` when absent or `null`, `Bad` for other JSON types.
#[derive(Debug, Default)]
pub enum Lax<T> {
    #[default]
    Null,
    Ok(T),
    Bad,
}

impl<T> Lax<T> {
    /// The object, or a 400 naming `param` when the value is not an object.
    pub fn object(&self, param: impl FnOnce() -> String) -> Result<&T, ApiError> {
        self.as_ref()
            .ok_or_else(|| invalid(param(), "expected an object"))
    }

    pub fn ok(self) -> Option<T> {
        match self {
            Lax::Ok(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_ref(&self) -> Option<&T> {
        match self {
            Lax::Ok(t) => Some(t),
            _ => None,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lax<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Lax<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Lax::Ok)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lax::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lax::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lax::Bad)
            }
            lenient_scalars!(Lax::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| Lax::Bad)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON array of `T`; `Null` when absent or `null`, `Bad` for other JSON types.
#[derive(Debug, Default)]
pub enum LaxList<T> {
    #[default]
    Null,
    List(Vec<T>),
    Bad,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LaxList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LaxList<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(LaxList::List(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LaxList::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LaxList::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LaxList::Bad)
            }
            lenient_scalars!(LaxList::Bad);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LaxList::Bad)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A field kept as raw JSON when present, `null` included (`Option<&RawValue>` would
/// turn `null` into `None`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MaybeRaw<'a>(pub Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeRaw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|r| MaybeRaw(Some(r)))
    }
}

/// True when a raw JSON value is an object.
pub fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// A raw JSON value that is a string, unescaped; `None` for other types.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match LStr::deserialize(&mut serde_json::Deserializer::from_str(raw.get())) {
        Ok(LStr::Str(s)) => Some(s),
        _ => None,
    }
}

/// OpenAI message content: a string, `null`, or an array of parts.
#[derive(Debug, Default)]
pub enum Content<'a> {
    #[default]
    Null,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
    Bad,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Null)
            }
            lenient_scalars!(Content::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Content::Parts(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| Content::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, `null`/absent, an array of `T`, or anything else (Anthropic `content` and
/// `system`, Responses `input` and `output`).
#[derive(Debug, Default)]
pub enum StrOrList<'a, T> {
    #[default]
    Null,
    Str(Cow<'a, str>),
    List(Vec<T>),
    Bad,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for StrOrList<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOrList<'de, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrList::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(StrOrList::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(StrOrList::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(StrOrList::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(StrOrList::Null)
            }
            lenient_scalars!(StrOrList::Bad);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(StrOrList::List(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| StrOrList::Bad)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON boolean; anything else is `Bad` (absent and `null` are `None`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum LBool {
    #[default]
    None,
    Is(bool),
    Bad,
}

impl<'de> Deserialize<'de> for LBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LBool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(LBool::Is(b))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LBool::None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LBool::None)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LBool::Bad)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LBool::Bad)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|_| LBool::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, an object read as `T`, or anything else.
pub(crate) enum LStrOr<'a, T> {
    Str(Cow<'a, str>),
    Obj(T),
    Other,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for LStrOr<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LStrOr<'de, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(LStrOr::Obj)
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(LStrOr::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LStrOr::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(LStrOr::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStrOr::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LStrOr::Other)
            }
            lenient_scalars!(LStrOr::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| LStrOr::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// True when a raw value is `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}
