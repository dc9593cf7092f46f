//! Gemini SSE (`alt=sse`: one `GenerateContentResponse` per event) read into hub events.

use super::response::{arguments_string, stop_reason, GFunctionCall, GUsage, PromptFeedback};
use super::{from_gerror, GError};
use crate::hub::{self, Encoder, Event, StopReason};
use crate::translate::{self as t, SseParser};
use crate::upstream_error::UpstreamError;
use axum::http::StatusCode;
use bytes::BytesMut;
use serde::Deserialize;
use std::borrow::Cow;

/// One streamed `GenerateContentResponse`, strings borrowed from the event.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamResponse<'a> {
    #[serde(default, borrow)]
    candidates: Vec<StreamCandidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<GUsage>,
    #[serde(default, borrow)]
    model_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    response_id: Option<Cow<'a, str>>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    /// An error inside a stream.
    #[serde(default)]
    error: Option<GError>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<StreamContent<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize, Default)]
struct StreamContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<StreamPart<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamPart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<GFunctionCall>,
}

#[derive(Default, Clone)]
struct CandidateState {
    started: bool,
    tools: u32,
    finished: bool,
}

/// Gemini SSE → hub events.
#[derive(Default)]
pub struct GeminiDecoder {
    sse: SseParser,
    st: DecodeState,
}

/// What a [`GeminiDecoder`] knows besides its SSE buffer.
#[derive(Default)]
struct DecodeState {
    started: bool,
    candidates: Vec<CandidateState>,
    usage: Option<GUsage>,
}

fn candidate_state(
    candidates: &mut Vec<CandidateState>,
    index: u32,
) -> Option<&mut CandidateState> {
    let i = index as usize;
    if i >= 64 {
        return None;
    }
    if i >= candidates.len() {
        candidates.resize(i + 1, CandidateState::default());
    }
    Some(&mut candidates[i])
}

impl DecodeState {
    fn handle(
        &mut self,
        data: &[u8],
        enc: &mut dyn Encoder,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        if data.trim_ascii() == b"[DONE]" {
            return Ok(());
        }
        let resp: StreamResponse<'_> = serde_json::from_slice(data).map_err(|e| {
            t::stream_error(format!("gemini sent a stream event llmgw cannot read: {e}"))
        })?;
        if let Some(err) = resp.error {
            return Err(from_gerror(err, StatusCode::OK, None));
        }
        if !self.started {
            self.started = true;
            enc.event(
                Event::Start {
                    id: resp.response_id.as_deref().unwrap_or(""),
                    model: resp.model_version.as_deref().unwrap_or(""),
                },
                out,
            )?;
        }
        self.emit(resp.candidates, resp.prompt_feedback, enc, out)?;
        if let Some(u) = resp.usage_metadata {
            self.usage = Some(u);
        }
        Ok(())
    }

    fn emit(
        &mut self,
        candidates: Vec<StreamCandidate<'_>>,
        feedback: Option<PromptFeedback>,
        enc: &mut dyn Encoder,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        if candidates.is_empty() {
            if feedback.and_then(|f| f.block_reason).is_some() {
                if let Some(st) = candidate_state(&mut self.candidates, 0) {
                    if !st.finished {
                        st.started = true;
                        st.finished = true;
                        enc.event(
                            Event::Finish {
                                choice: 0,
                                reason: StopReason::ContentFilter,
                                sequence: None,
                            },
                            out,
                        )?;
                    }
                }
            }
            return Ok(());
        }
        for (pos, cand) in candidates.into_iter().enumerate() {
            let choice = cand.index.unwrap_or(pos as u32);
            let Some(st) = candidate_state(&mut self.candidates, choice) else {
                continue;
            };
            if st.finished {
                continue;
            }
            st.started = true;
            for part in cand.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(fc) = part.function_call {
                    let index = st.tools;
                    st.tools += 1;
                    let id = fc.id.unwrap_or_else(|| t::random_id("call_"));
                    enc.event(
                        Event::ToolStart {
                            choice,
                            index,
                            id: &id,
                            name: &fc.name,
                        },
                        out,
                    )?;
                    let args = arguments_string(fc.args);
                    enc.event(
                        Event::ToolArgs {
                            choice,
                            index,
                            json: &args,
                        },
                        out,
                    )?;
                } else if let Some(text) = part.text {
                    if text.is_empty() {
                        continue;
                    }
                    let ev = if part.thought == Some(true) {
                        Event::Reasoning {
                            choice,
                            text: &text,
                        }
                    } else {
                        Event::Text {
                            choice,
                            text: &text,
                        }
                    };
                    enc.event(ev, out)?;
                }
            }
            if let Some(reason) = cand.finish_reason.as_deref() {
                st.finished = true;
                enc.event(
                    Event::Finish {
                        choice,
                        reason: stop_reason(Some(reason), st.tools > 0),
                        sequence: None,
                    },
                    out,
                )?;
            }
        }
        Ok(())
    }
}

impl hub::Decoder for GeminiDecoder {
    fn feed(
        &mut self,
        chunk: &[u8],
        enc: &mut dyn Encoder,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamError> {
        self.sse.push(chunk)?;
        while let Some(ev) = self.sse.next_ref() {
            self.st.handle(&ev.data, enc, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, enc: &mut dyn Encoder, out: &mut BytesMut) -> Result<(), UpstreamError> {
        if let Some(ev) = self.sse.take_rest_ref() {
            self.st.handle(&ev.data, enc, out)?;
        }
        let st = &self.st;
        let all_done = st.started
            && !st.candidates.is_empty()
            && st.candidates.iter().all(|c| c.finished || !c.started);
        if !all_done {
            return Err(t::stream_error(
                "the gemini stream ended before a finish reason",
            ));
        }
        if let Some(u) = &st.usage {
            enc.event(Event::Usage(u.hub()), out)?;
        }
        enc.event(Event::Done, out)
    }
}
