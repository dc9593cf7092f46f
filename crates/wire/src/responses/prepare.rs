//! Before routing, for every Responses request (passed through or translated): what the
//! gateway must know from the body, read in one pass: whether the answer is stored
//! (`store`, OpenAI's default `true` when absent unless configured otherwise), the stored
//! response it continues (`previous_response_id`), and the tool name table of its
//! `tools` and `additional_tools` items. What llmgw does not offer (`conversation`,
//! `background`, stored `prompt`s) is refused with a clear 400.

use crate::prepared::names::{Declared, MAX_TOOLS};
use crate::prepared::{Kind, Prepared, ToolNames};
use crate::translate::{invalid, is_null, raw_str, LBool, LStr, Lax, LaxList, MaybeRaw, StrOrList};
use llmgw_core::error::ApiError;
use serde::Deserialize;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default)]
    store: LBool,
    #[serde(default, borrow)]
    previous_response_id: MaybeRaw<'a>,
    #[serde(default, borrow)]
    conversation: MaybeRaw<'a>,
    #[serde(default)]
    background: LBool,
    #[serde(default, borrow)]
    prompt: MaybeRaw<'a>,
    #[serde(default, borrow)]
    tools: LaxList<Lax<ToolHead<'a>>>,
    #[serde(default, borrow)]
    input: StrOrList<'a, Lax<ItemHead<'a>>>,
}

/// A tool's type and name, and a namespace's tools.
#[derive(Deserialize, Default)]
struct ToolHead<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    tools: LaxList<Lax<ToolHead<'a>>>,
}

/// An input item's type, and an `additional_tools` item's tools.
#[derive(Deserialize, Default)]
struct ItemHead<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    tools: LaxList<Lax<ToolHead<'a>>>,
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{what}: llmgw keeps responses (store, previous_response_id) but not conversations, \
         background responses or stored prompts; send the conversation in 'input' or continue \
         it with previous_response_id"
    ))
    .with_param(param)
    .with_code("unsupported_parameter")
}

/// Reads what routing needs from a Responses body. `default_store` is what an absent
/// `store` means (`[responses] default_store`).
pub fn prepare(body: &[u8], default_store: bool) -> Result<Prepared, ApiError> {
    let h: Head<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let set = |v: MaybeRaw<'_>| v.0.is_some_and(|r| !is_null(r));
    let store = match h.store {
        LBool::Is(b) => b,
        LBool::None => default_store,
        LBool::Bad => return Err(invalid("store", "expected true or false")),
    };
    let previous_response_id = match h.previous_response_id.0.filter(|r| !is_null(r)) {
        None => None,
        Some(raw) => match raw_str(raw) {
            Some(id) if !id.is_empty() && id.len() <= 256 => Some(id.into_owned()),
            _ => {
                return Err(invalid(
                    "previous_response_id",
                    "expected the id of a stored response",
                ))
            }
        },
    };
    if set(h.conversation) {
        return Err(unsupported("conversation", "conversation is not supported"));
    }
    if h.background == LBool::Is(true) {
        return Err(unsupported(
            "background",
            "background: true is not supported",
        ));
    }
    if set(h.prompt) {
        return Err(unsupported(
            "prompt",
            "stored prompts ('prompt') are not supported",
        ));
    }
    let mut declared: Vec<Declared<'_>> = Vec::new();
    declare(&h.tools, &mut declared)?;
    if let StrOrList::List(items) = &h.input {
        for item in items {
            if let Lax::Ok(i) = item {
                if i.kind.as_str() == Some("additional_tools") {
                    declare(&i.tools, &mut declared)?;
                }
            }
        }
    }
    let tools = if declared
        .iter()
        .any(|d| d.namespace.is_some() || d.kind == Kind::Custom)
    {
        ToolNames::build(&declared)
    } else {
        ToolNames::default()
    };
    Ok(Prepared {
        tools,
        store,
        previous_response_id,
        history: None,
    })
}

/// Adds a tool list's functions and custom tools (a namespace's included).
fn declare<'h>(
    tools: &'h LaxList<Lax<ToolHead<'_>>>,
    out: &mut Vec<Declared<'h>>,
) -> Result<(), ApiError> {
    let LaxList::List(tools) = tools else {
        return Ok(());
    };
    for tool in tools.iter().filter_map(Lax::as_ref) {
        if out.len() >= MAX_TOOLS {
            return Err(invalid(
                "tools",
                format_args!("more than {MAX_TOOLS} tools (namespaces' tools included)"),
            ));
        }
        let Some(name) = tool.name.as_str() else {
            continue;
        };
        match tool.kind.as_str() {
            Some("function") => out.push(Declared {
                namespace: None,
                name,
                kind: Kind::Function,
            }),
            Some("custom") => out.push(Declared {
                namespace: None,
                name,
                kind: Kind::Custom,
            }),
            Some("namespace") => {
                let LaxList::List(inner) = &tool.tools else {
                    continue;
                };
                for f in inner.iter().filter_map(Lax::as_ref) {
                    let kind = match f.kind.as_str() {
                        Some("function") => Kind::Function,
                        Some("custom") => Kind::Custom,
                        _ => continue,
                    };
                    if let Some(n) = f.name.as_str() {
                        if out.len() >= MAX_TOOLS {
                            return Err(invalid(
                                "tools",
                                format_args!(
                                    "more than {MAX_TOOLS} tools (namespaces' tools included)"
                                ),
                            ));
                        }
                        out.push(Declared {
                            namespace: Some(name),
                            name: n,
                            kind,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The tool table of a request that was not prepared (unit tests, fuzzing): what
/// [`prepare`] would have built, or none.
pub fn tool_names(body: &[u8]) -> ToolNames {
    prepare(body, false).map(|p| p.tools).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_defaults_and_refusals() {
        let p = prepare(br#"{"model":"m","input":"hi"}"#, true).unwrap();
        assert!(p.store && p.previous_response_id.is_none() && p.tools.is_empty());
        let p = prepare(br#"{"model":"m","input":"hi","store":false}"#, true).unwrap();
        assert!(!p.store);
        let p = prepare(br#"{"model":"m","input":"hi"}"#, false).unwrap();
        assert!(!p.store);
        let p = prepare(br#"{"input":"x","previous_response_id":"resp_1"}"#, true).unwrap();
        assert_eq!(p.previous_response_id.as_deref(), Some("resp_1"));
        for (body, param) in [
            (r#"{"store":"yes"}"#, "store"),
            (r#"{"previous_response_id":5}"#, "previous_response_id"),
            (r#"{"conversation":"c"}"#, "conversation"),
            (r#"{"background":true}"#, "background"),
            (r#"{"prompt":{"id":"p"}}"#, "prompt"),
        ] {
            let e = prepare(body.as_bytes(), true).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn tables_cover_tools_and_additional_tools() {
        let body = br#"{"input":[{"type":"additional_tools","role":"developer","tools":[{"type":"namespace","name":"clock","tools":[{"type":"function","name":"sleep"}]},{"type":"namespace","name":"functions","tools":[{"type":"custom","name":"exec"}]}]},{"role":"user","content":"hi"}],"tools":[{"type":"function","name":"f"},{"type":"web_search"}]}"#;
        let t = prepare(body, false).unwrap().tools;
        assert_eq!(t.upstream(Some("clock"), "sleep"), "clock__sleep");
        assert_eq!(t.client("functions__exec").unwrap().kind, Kind::Custom);
        assert!(t.client("f").is_none());
    }
}
