//! A Responses request's tools in the hub form: `function` tools as they are,
//! `namespace` tools flattened (their functions under the names of the request's
//! [`ToolNames`] table), `custom` (freeform) tools as a function of one string argument,
//! `input`, and hosted tools (web search, file search, …), which only OpenAI's servers
//! run, refused with a 400 naming the tool, or dropped under `drop_params`.

use crate::hub::{self, Target, Tool, ToolChoice};
use crate::prepared::ToolNames;
use crate::translate::{self as t, invalid, LBool, LStr, Lax, LaxList, MaybeRaw};
use llmgw_core::error::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// One tool, with the fields of every type it may be.
#[derive(Deserialize, Default)]
pub struct ToolIn<'a> {
    #[serde(rename = "type", default, borrow)]
    pub(super) kind: LStr<'a>,
    #[serde(default, borrow)]
    pub(super) name: LStr<'a>,
    #[serde(default, borrow)]
    description: LStr<'a>,
    #[serde(default, borrow)]
    parameters: MaybeRaw<'a>,
    #[serde(default)]
    strict: LBool,
    /// A namespace's tools.
    #[serde(default, borrow)]
    pub(super) tools: LaxList<Lax<ToolIn<'a>>>,
    /// A custom tool's input format (`text`, or a `grammar`).
    #[serde(default, borrow)]
    format: Lax<CustomFormat<'a>>,
}

#[derive(Deserialize, Default)]
struct CustomFormat<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    syntax: LStr<'a>,
    #[serde(default, borrow)]
    definition: LStr<'a>,
}

/// A custom tool's parameters upstream.
const CUSTOM_SCHEMA: &str = r#"{"type":"object","properties":{"input":{"type":"string","description":"The tool's whole input, as free-form text."}},"required":["input"],"additionalProperties":false}"#;

fn custom_schema() -> Option<&'static RawValue> {
    serde_json::from_str(CUSTOM_SCHEMA).ok()
}

/// Adds the tools of one list (`tools`, or an `additional_tools` item's) to `out`.
pub(super) fn convert_tools<'a>(
    target: &Target<'_>,
    param: &str,
    tools: &LaxList<Lax<ToolIn<'a>>>,
    names: &ToolNames,
    out: &mut Vec<Tool<'a>>,
) -> Result<(), ApiError> {
    let tools = match tools {
        LaxList::List(t) => t,
        LaxList::Null => return Ok(()),
        LaxList::Bad => return Err(invalid(param, "expected an array")),
    };
    if out.len() + tools.len() > crate::prepared::names::MAX_TOOLS {
        return Err(too_many());
    }
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("{param}[{i}]");
        let tool = tool.object(|| at.clone())?;
        match tool.kind.as_str() {
            Some("namespace") => {
                let Some(space) = tool.name.as_str() else {
                    return Err(invalid(format!("{at}.name"), "a namespace needs a name"));
                };
                let inner = match &tool.tools {
                    LaxList::List(t) => t,
                    LaxList::Null => continue,
                    LaxList::Bad => {
                        return Err(invalid(format!("{at}.tools"), "expected an array"))
                    }
                };
                if out.len() + inner.len() > crate::prepared::names::MAX_TOOLS {
                    return Err(too_many());
                }
                for (j, f) in inner.iter().enumerate() {
                    let at = format!("{at}.tools[{j}]");
                    let f = f.object(|| at.clone())?;
                    if let Some(tool) = one(target, &at, f, Some((space, tool)), names)? {
                        out.push(tool);
                    }
                }
            }
            _ => {
                if let Some(tool) = one(target, &at, tool, None, names)? {
                    out.push(tool);
                }
            }
        }
    }
    Ok(())
}

fn too_many() -> ApiError {
    invalid(
        "tools",
        format_args!(
            "more than {} tools (namespaces' tools included)",
            crate::prepared::names::MAX_TOOLS
        ),
    )
}

/// One function or custom tool (in `namespace` when given); `None` when dropped.
fn one<'a>(
    target: &Target<'_>,
    at: &str,
    tool: &ToolIn<'a>,
    namespace: Option<(&str, &ToolIn<'a>)>,
    names: &ToolNames,
) -> Result<Option<Tool<'a>>, ApiError> {
    let chat = target.format == hub::Format::OpenAiChat;
    let custom = match tool.kind.as_str() {
        Some("function") => false,
        Some("custom") => true,
        Some("namespace") => return Err(invalid(at, "namespaces cannot be nested")),
        other => return hosted(target, at, other.unwrap_or("(none)")),
    };
    let Some(name) = tool.name.cow() else {
        return Err(invalid(format!("{at}.name"), "missing"));
    };
    let strict = match tool.strict {
        LBool::Is(s) => s,
        LBool::None => false,
        LBool::Bad => return Err(invalid(format!("{at}.strict"), "expected true or false")),
    };
    if strict && !chat && !custom {
        t::unsupported(target.dep, target.name(), &format!("{at}.strict"))?;
    }
    let mut description = tool.description.cow();
    if let Some((space, ns)) = namespace {
        // The model reads the namespace's purpose with each of its tools.
        let about = ns.description.as_str().filter(|d| !d.is_empty());
        description = Some(Cow::Owned(match (about, description) {
            (Some(a), Some(d)) => format!("[{space}: {a}] {d}"),
            (Some(a), None) => format!("[{space}: {a}]"),
            (None, Some(d)) => format!("[{space}] {d}"),
            (None, None) => format!("[{space}]"),
        }));
    }
    let flat = names.upstream(namespace.map(|(s, _)| s), &name);
    let name = match flat {
        Cow::Borrowed(f) if f == name => name,
        f => Cow::Owned(f.into_owned()),
    };
    if custom {
        if let Lax::Ok(f) = &tool.format {
            if let (Some("grammar"), Some(def)) = (f.kind.as_str(), f.definition.as_str()) {
                let syntax = f.syntax.as_str().unwrap_or("formal");
                let mut d = description.map(Cow::into_owned).unwrap_or_default();
                if !d.is_empty() {
                    d.push_str("\n\n");
                }
                d.push_str(&format!(
                    "The input must follow this {syntax} grammar:\n{def}"
                ));
                description = Some(Cow::Owned(d));
            }
        }
    }
    Ok(Some(Tool {
        name,
        description,
        parameters: if custom {
            custom_schema()
        } else {
            tool.parameters.0
        },
        strict: strict && chat && !custom,
        cache_control: None,
    }))
}

/// A hosted tool (web search, file search, code interpreter, …): only OpenAI's servers
/// run it. Refused, naming it, unless the deployment drops what it cannot do.
fn hosted<'a>(target: &Target<'_>, at: &str, kind: &str) -> Result<Option<Tool<'a>>, ApiError> {
    if target.dep.drop_params {
        tracing::debug!(deployment = %target.dep.id, tool = %llmgw_core::logging::Clean(kind), "dropping a hosted tool");
        return Ok(None);
    }
    let codex = if kind.starts_with("web_search") {
        " (Codex: web_search = \"disabled\" in its config.toml)"
    } else {
        ""
    };
    Err(ApiError::bad_request(format!(
        "the hosted tool {kind:?} ('{at}') runs only on OpenAI's servers and {} (deployment {}) \
         cannot run it: remove it from the request{codex}, or set drop_params = true on the \
         deployment to drop it",
        target.name(),
        target.dep.id
    ))
    .with_param(format!("{at}.type"))
    .with_code("unsupported_tool"))
}

#[derive(Deserialize)]
struct ToolChoiceIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: LStr<'a>,
    #[serde(default, borrow)]
    name: LStr<'a>,
    #[serde(default, borrow)]
    namespace: LStr<'a>,
}

/// `tool_choice`: a mode, or one function or custom tool (namespaced or not).
pub(super) fn tool_choice<'a>(
    v: &'a RawValue,
    names: &ToolNames,
) -> Result<ToolChoice<'a>, ApiError> {
    let bad = || {
        invalid(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}",
        )
    };
    if let Some(s) = t::raw_str(v) {
        return match &*s {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        };
    }
    let c: ToolChoiceIn<'a> = serde_json::from_str(v.get()).map_err(|_| bad())?;
    match (c.kind.as_str(), c.name.cow()) {
        (Some("function" | "custom"), Some(name)) => {
            let flat = names.upstream(c.namespace.as_str(), &name).into_owned();
            Ok(ToolChoice::Tool(if flat == name {
                name
            } else {
                Cow::Owned(flat)
            }))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use crate::convert::{chat_body, stream_translator, translate_response};
    use crate::hub::Format;
    use crate::request::{ClientRequest, Endpoint};
    use crate::translate::testing::{deployment, mutate};
    use bytes::{Bytes, BytesMut};
    use llmgw_core::config::ProviderKind;
    use serde_json::{json, Value};
    use std::sync::Arc;

    /// A request as the gateway hands it on: parsed and prepared.
    fn prepared(body: Value) -> ClientRequest {
        let mut req =
            ClientRequest::parse(Endpoint::Responses, Bytes::from(body.to_string())).unwrap();
        req.prepared = Some(Arc::new(
            super::super::prepare::prepare(&req.body, false).unwrap(),
        ));
        req
    }

    /// What Codex 0.171 sends: top-level functions, a namespace, a hosted tool (dropped
    /// here), `client_metadata`; with its default model the tools come as an
    /// `additional_tools` item instead, with a custom (freeform) tool in a namespace.
    fn codex_body(stream: bool) -> Value {
        json!({"model": "g", "stream": stream, "store": false, "tool_choice": "auto",
        "parallel_tool_calls": true, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "s", "client_metadata": {"session_id": "s", "turn_id": "t"},
        "reasoning": {"summary": "auto"}, "text": {"verbosity": "low"},
        "tools": [
            {"type": "function", "name": "exec_command", "strict": false, "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
                {"type": "function", "name": "close_agent", "description": "Close one.", "strict": false,
                 "parameters": {"type": "object", "properties": {"target": {"type": "string"}}}}]},
            {"type": "web_search", "external_web_access": false}],
        "input": [
            {"type": "additional_tools", "role": "developer", "tools": [
                {"type": "namespace", "name": "functions", "description": "", "tools": [
                    {"type": "custom", "name": "exec", "description": "Run JS.",
                     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}]}]},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
            {"type": "function_call", "name": "close_agent", "namespace": "multi_agent_v1", "call_id": "c1", "arguments": "{\"target\":\"x\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "closed"},
            {"type": "custom_tool_call", "name": "exec", "namespace": "functions", "call_id": "c2", "input": "text('hi')"},
            {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "hi"}]}
        ]})
    }

    #[test]
    fn codex_requests_reach_chat_upstreams_flattened() {
        // Without drop_params the hosted tool is a 400 naming it.
        let dep = deployment(ProviderKind::Sglang, "q", false);
        let e = chat_body(&dep, &prepared(codex_body(false)), Format::OpenAiChat).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[2].type"), "{}", e.message);
        assert!(
            e.message.contains("\"web_search\"") && e.message.contains("drop_params"),
            "{}",
            e.message
        );
        let mut body = codex_body(false);
        body["tools"].as_array_mut().unwrap().pop();
        let out: Value =
            serde_json::from_slice(&chat_body(&dep, &prepared(body), Format::OpenAiChat).unwrap())
                .unwrap();
        let names: Vec<&str> = out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "exec_command",
                "multi_agent_v1__close_agent",
                "functions__exec"
            ]
        );
        let exec = &out["tools"][2]["function"];
        assert_eq!(exec["parameters"]["required"], json!(["input"]));
        assert!(exec["description"]
            .as_str()
            .unwrap()
            .contains("lark grammar:\nstart: /.+/"));
        assert!(out.get("client_metadata").is_none(), "{out}");
        let m = &out["messages"];
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["name"],
            "multi_agent_v1__close_agent"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "closed"})
        );
        assert_eq!(
            m[4]["tool_calls"][0]["function"],
            json!({"name": "functions__exec", "arguments": "{\"input\":\"text('hi')\"}"})
        );
        assert_eq!(
            m[5],
            json!({"role": "tool", "tool_call_id": "c2", "content": "hi"})
        );
        // To Anthropic and Gemini too (Gemini matches results by name).
        for (kind, wire) in [
            (ProviderKind::Anthropic, Format::Anthropic),
            (ProviderKind::Gemini, Format::Gemini),
        ] {
            let d = deployment(kind, "m", true);
            chat_body(&d, &prepared(codex_body(false)), wire)
                .unwrap_or_else(|e| panic!("{wire:?}: {}", e.message));
        }
    }

    #[test]
    fn calls_come_back_with_namespace_and_as_custom_tool_calls() {
        let dep = deployment(ProviderKind::Sglang, "q", false);
        let answer = r#"{"id":"c","model":"q","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"t1","type":"function","function":{"name":"multi_agent_v1__close_agent","arguments":"{\"target\":\"x\"}"}},
            {"id":"t2","type":"function","function":{"name":"functions__exec","arguments":"{\"input\":\"text(\\\"hi\\\")\"}"}},
            {"id":"t3","type":"function","function":{"name":"exec_command","arguments":"{}"}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let req = prepared(codex_body(false));
        let out = translate_response(
            Format::OpenAiChat,
            &dep,
            &req,
            Bytes::from_static(answer.as_bytes()),
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let o = &out["output"];
        assert_eq!(
            (
                o[0]["type"].as_str(),
                o[0]["name"].as_str(),
                o[0]["namespace"].as_str()
            ),
            (
                Some("function_call"),
                Some("close_agent"),
                Some("multi_agent_v1")
            )
        );
        assert_eq!(o[1]["type"], "custom_tool_call");
        assert_eq!(
            (
                o[1]["name"].as_str(),
                o[1]["namespace"].as_str(),
                o[1]["input"].as_str()
            ),
            (Some("exec"), Some("functions"), Some("text(\"hi\")"))
        );
        assert!(o[2].get("namespace").is_none() && o[2]["name"] == "exec_command");
        // Streamed: the same items, the custom tool's input in its own events.
        let stream = concat!(
            "data: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"function\":{\"name\":\"multi_agent_v1__close_agent\",\"arguments\":\"{\\\"target\\\":\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"x\\\"}\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"t2\",\"function\":{\"name\":\"functions__exec\",\"arguments\":\"{\\\"input\\\":\\\"te\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"q\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"xt()\\\"}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n");
        let req = prepared(codex_body(true));
        let mut tr = stream_translator(Format::OpenAiChat, &dep, &req).unwrap();
        let mut buf = BytesMut::new();
        tr.feed(stream.as_bytes(), &mut buf).unwrap();
        tr.finish(&mut buf).unwrap();
        let events: Vec<Value> = std::str::from_utf8(&buf)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| {
                e.split_once("\ndata: ")
                    .map(|(_, d)| serde_json::from_str(d).unwrap())
            })
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(
            kinds.contains(&"response.custom_tool_call_input.delta"),
            "{kinds:?}"
        );
        let done = events
            .iter()
            .find(|e| e["type"] == "response.custom_tool_call_input.done")
            .unwrap();
        assert_eq!(done["input"], "text()");
        let added = events
            .iter()
            .find(|e| e["type"] == "response.output_item.added")
            .unwrap();
        assert_eq!(added["item"]["namespace"], "multi_agent_v1");
        assert_eq!(added["item"]["name"], "close_agent");
        let args = events
            .iter()
            .find(|e| e["type"] == "response.function_call_arguments.done")
            .unwrap();
        assert_eq!(args["name"], "close_agent");
        let last = &events.last().unwrap()["response"]["output"];
        assert_eq!(last[0]["namespace"], "multi_agent_v1");
        assert_eq!(last[1]["type"], "custom_tool_call");
        assert_eq!(last[1]["input"], "text()");
    }

    /// Acceptance 3, end to end through the wire: for random tool lists, each tool the
    /// upstream is offered, called by its upstream name, comes back to the client as the
    /// tool it declared (namespace, name and kind), and no two offered names are equal.
    #[test]
    fn random_tool_lists_round_trip_through_chat() {
        let mut rng = fastrand::Rng::with_seed(2222);
        let dep = deployment(ProviderKind::Sglang, "q", false);
        let alphabet = ["a", "b", "_", ".", "x-y", "é", "__"];
        let word = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(1..4))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        for _ in 0..300 {
            let mut tools = Vec::new();
            let mut declared = Vec::new();
            for _ in 0..rng.usize(1..6) {
                let custom = rng.bool();
                let kind = if custom { "custom" } else { "function" };
                let name = word(&mut rng);
                if rng.bool() {
                    let space = word(&mut rng);
                    declared.push((Some(space.clone()), name.clone(), custom));
                    tools.push(json!({"type": "namespace", "name": space, "tools": [{"type": kind, "name": name}]}));
                } else {
                    declared.push((None, name.clone(), custom));
                    tools.push(json!({"type": kind, "name": name}));
                }
            }
            let req = prepared(json!({"model": "g", "input": "x", "tools": tools}));
            let out: Value =
                serde_json::from_slice(&chat_body(&dep, &req, Format::OpenAiChat).unwrap())
                    .unwrap();
            let offered: Vec<String> = out["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(offered.len(), declared.len());
            for (k, (space, name, custom)) in declared.iter().enumerate() {
                let flat = &offered[k];
                if space.is_some() {
                    assert!(crate::prepared::names::valid(flat), "{flat}");
                    let clash = offered
                        .iter()
                        .enumerate()
                        .any(|(j, o)| j != k && o == flat && declared[j] != declared[k]);
                    assert!(!clash, "{flat} offered twice: {declared:?}");
                }
                let args = if *custom {
                    json!({"input": "in"})
                } else {
                    json!({})
                };
                let answer = json!({"id": "c", "model": "q", "choices": [{"index": 0, "message": {"role": "assistant",
                    "content": null, "tool_calls": [{"id": "t", "type": "function", "function": {"name": flat, "arguments": args.to_string()}}]},
                    "finish_reason": "tool_calls"}]});
                let resp = translate_response(
                    Format::OpenAiChat,
                    &dep,
                    &req,
                    Bytes::from(answer.to_string()),
                )
                .unwrap();
                let resp: Value = serde_json::from_slice(&resp).unwrap();
                let item = &resp["output"][0];
                // A plain tool declared twice (custom and function) is the client's own clash.
                let dup_plain = declared
                    .iter()
                    .filter(|d| d.0.is_none() && d.1 == *name)
                    .count()
                    > 1;
                if !dup_plain {
                    assert_eq!(
                        item["type"],
                        if *custom {
                            "custom_tool_call"
                        } else {
                            "function_call"
                        },
                        "{item}"
                    );
                }
                assert_eq!(item["name"].as_str(), Some(name.as_str()));
                assert_eq!(item["namespace"].as_str(), space.as_deref());
            }
            // Hostile variants of the same body never panic.
            let b = mutate(&mut rng, &req.body);
            if let Ok(mut r) = ClientRequest::parse(Endpoint::Responses, Bytes::from(b)) {
                if let Ok(p) = super::super::prepare::prepare(&r.body, true) {
                    r.prepared = Some(Arc::new(p));
                }
                let _ = chat_body(&dep, &r, Format::OpenAiChat);
            }
        }
    }
}
