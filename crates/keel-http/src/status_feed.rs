//! `GET /status/history` and `GET /status/stream`: the transitions the
//! registry kept, and a live feed of the health view. Both answer 200
//! whatever the status, so a page can follow a failing service without its
//! reads failing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use keel_core::Status;
use keel_health_status::StatusChange;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::health::{Format, HealthState, StatusSchema, ViewOptions, json_body, rfc3339};
use crate::openapi::{ErrorSchema, SseEvent};
use crate::{ApiError, StreamSlot};

/// How often the stream repeats the whole view when nothing changed, so
/// latencies, last checks and uptimes stay current.
pub(crate) const REFRESH: Duration = Duration::from_secs(2);

/// One transition of a component.
#[derive(Serialize, ToSchema)]
pub(crate) struct TransitionBody<'a> {
    /// RFC 3339, milliseconds.
    time: String,
    component: &'a str,
    /// Null for the component's initial state: the first status it settled
    /// on after start-up.
    #[schema(value_type = Option<StatusSchema>)]
    from: Option<Status>,
    #[schema(value_type = StatusSchema)]
    to: Status,
    /// The check message that caused it.
    message: &'a str,
}

fn transition_body(change: &StatusChange) -> TransitionBody<'_> {
    TransitionBody {
        time: rfc3339(Some(change.time)).unwrap_or_default(),
        component: &change.component,
        from: change.from,
        to: change.to,
        message: &change.message,
    }
}

/// The last transitions of every component, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct StatusHistoryBody<'a> {
    /// RFC 3339: when this was read.
    now: String,
    /// By component name; every registered component has an entry.
    components: BTreeMap<&'a str, Vec<TransitionBody<'a>>>,
}

/// The transitions each component went through (the last 100 by default:
/// `[health] history`), newest first. 200 whatever the status.
#[utoipa::path(get, path = "/status/history", operation_id = "status_history", tag = "health", responses(
    (status = 200, description = "Transitions per component, newest first", body = StatusHistoryBody<'static>),
))]
pub(crate) async fn history(State(state): State<Arc<HealthState>>) -> Response {
    let history = state.health.history();
    let body = StatusHistoryBody {
        now: rfc3339(Some(SystemTime::now())).unwrap_or_default(),
        components: history
            .iter()
            .map(|(name, changes)| (name.as_str(), changes.iter().map(transition_body).collect()))
            .collect(),
    };
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn view_event(state: &HealthState) -> Event {
    let options = ViewOptions { short: false, format: Format::Json, map: true, filter: None, exclude: Vec::new() };
    let snapshot = state.health.snapshot();
    Event::default().event("status").json_data(json_body(&state.app, &options, &snapshot)).unwrap_or_default()
}

/// Live health (Server-Sent Events): `status`, the whole view in map mode
/// (as `GET /status?map=true` in JSON), at once, after every transition and
/// every 2 s; `change`, each transition as it happens. Ends when the
/// process starts shutting down.
#[utoipa::path(get, path = "/status/stream", operation_id = "status_stream", tag = "health", responses(
    (status = 200, description = "Server-Sent Events: `status` (the map-mode view) and `change` (a transition); \
        ends after --stream-max-age", body = SseEvent, content_type = "text/event-stream"),
    (status = 503, description = "Too many streams (--max-streams, or 32 per client address)", body = ErrorSchema),
))]
pub(crate) async fn stream(
    State(state): State<Arc<HealthState>>,
    slot: StreamSlot,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (gate, permit) = slot.open()?;
    let changes = state.health.subscribe();
    let mut ticks = tokio::time::interval(REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = state.shutdown.token();
    let token = stop.clone();
    // The first tick fires at once: the current view opens the stream.
    let events = futures_util::stream::unfold(
        (state, changes, ticks, stop, Vec::<Event>::new()),
        |(state, mut changes, mut ticks, stop, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop() {
                    return Some((Ok(event), (state, changes, ticks, stop, pending)));
                }
                tokio::select! {
                    () = stop.cancelled() => return None,
                    _ = ticks.tick() => pending.push(view_event(&state)),
                    change = changes.recv() => match change {
                        Ok(change) => {
                            // Popped from the end: the change goes first, then the view it led to.
                            pending.push(view_event(&state));
                            pending.push(Event::default().event("change").json_data(transition_body(&change)).unwrap_or_default());
                            ticks.reset();
                        }
                        Err(RecvError::Lagged(_)) => pending.push(view_event(&state)),
                        Err(RecvError::Closed) => return None,
                    },
                }
            }
        },
    );
    Ok(Sse::new(gate.bound(permit, events, async move { token.cancelled().await })).keep_alive(KeepAlive::default()))
}
