//! `GET /api/v1/settings/{name}/stream`: a document followed over
//! Server-Sent Events, for clients that are not Keel processes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Rendered, SettingsState, find};
use crate::ApiError;
use crate::openapi::{ErrorSchema, SseEvent};

/// The version a reconnecting client saw last (`Last-Event-ID`).
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("Last-Event-ID: not text"))?.trim();
    if text.is_empty() {
        // What EventSource sends after an event without an id: nothing seen.
        return Ok(None);
    }
    text.parse::<i64>().ok().filter(|v| *v >= 0).map(Some).ok_or_else(|| {
        ApiError::bad_request(format!("Last-Event-ID: expected a version such as 3, got {}", crate::text::shown(text)))
    })
}

/// Why a settings stream ended, as its last event (`end`).
#[derive(Serialize, ToSchema)]
struct StreamEndBody {
    /// `shutdown`: the process is stopping; reconnect (to another replica)
    /// with `Last-Event-ID`.
    reason: &'static str,
}

/// One event of a settings stream: the document at `version`.
fn document_event(rendered: &Rendered) -> Event {
    Event::default().event("settings").id(rendered.version.to_string()).data(String::from_utf8_lossy(&rendered.body))
}

/// Follows a document (Server-Sent Events): `settings`, the whole document
/// as `GET` answers it, with `id:` its version, on connect and after every
/// new version. A client reconnecting with `Last-Event-ID` equal to the
/// version held gets nothing until the next one; with an older one it
/// gets the current document at once; with a newer one (it saw a replica
/// that is ahead) it gets nothing until this process holds a newer
/// version than that. A slow client gets the newest version, not each.
/// Shutdown ends the stream with an `end` event; `--stream-max-age` ends
/// it without one (reconnect).
#[utoipa::path(get, path = "/api/v1/settings/{name}/stream", operation_id = "settings_stream", tag = "settings",
    params(
        ("name" = String, Path, description = "The document name"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "The last version the client saw, e.g. 3",
            pattern = "^[0-9]{0,18}$"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `settings` (a document, `id:` its version) and `end` \
            (the process is shutting down: reconnect)", body = SseEvent, content_type = "text/event-stream"),
        (status = 400, description = "A Last-Event-ID that is not a version", body = ErrorSchema),
        (status = 404, description = "No such document", body = ErrorSchema),
        (status = 503, description = "Too many streams (--max-streams, or 32 per client address)", body = ErrorSchema),
    ))]
pub(super) async fn stream(
    State(state): State<Arc<SettingsState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    slot: crate::StreamSlot,
) -> Result<Response, ApiError> {
    let document = find(&state, &name)?.clone();
    let seen = last_event_id(&headers)?;
    let (gate, permit) = slot.open()?;
    let mut versions = document.versions();
    versions.mark_changed();
    // The newest version sent (or seen by the client before it reconnected).
    let sent = seen.unwrap_or(-1);
    let stop = Box::pin(slot.stopped());
    let events = futures_util::stream::unfold(Some((state, document, versions, sent, stop)), |run| async move {
        let (state, document, mut versions, mut sent, mut stop) = run?;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => {
                    let end = Event::default().event("end").json_data(StreamEndBody { reason: "shutdown" });
                    return Some((Ok::<Event, Infallible>(end.unwrap_or_default()), None));
                }
                changed = versions.changed() => {
                    // The document lives as long as the process: `Err` is not expected.
                    changed.ok()?;
                    versions.borrow_and_update();
                    let rendered = state.rendered(&*document);
                    if rendered.version > sent {
                        sent = rendered.version;
                        let event = document_event(&rendered);
                        return Some((Ok(event), Some((state, document, versions, sent, stop))));
                    }
                }
            }
        }
    });
    Ok(Sse::new(gate.bound(permit, events, std::future::pending())).keep_alive(KeepAlive::default()).into_response())
}
