//! The router: one `match` on (route, method), one handler per endpoint, errors turned into responses in
//! one place (`handle`). Handlers validate input, call one SQL function and shape its answer; every
//! decision about stock, holds and buyers is the extension's.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use uuid::Uuid;

use crate::app::App;
use crate::db::models::LeftView;
use crate::db::models::NewDrop;
use crate::db::queries::{self, Asked, HoldChange, Sizes};
use crate::feed::socketio;
use crate::feed::websocket as ws;
use crate::http::connections::BeyondCap;
use crate::http::errors::ApiError;
use crate::http::input::{parse_uuid, query_value, Fields};
use crate::http::respond::{self, Body};
use crate::http::{health, openapi, page};

/// Every path the adapter answers. Path parameters borrow from the request path.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Page,
    PageAsset(&'a str),
    Health,
    Metrics,
    OpenApi,
    Feed,
    SocketIo,
    Drops,
    Drop(&'a str),
    Waitlist(&'a str),
    LeaveWaitlist(&'a str),
    Draw(&'a str),
    DrawEntries(&'a str),
    Holds,
    CancelHold(&'a str),
    ExtendHold(&'a str),
    Sales,
    Buyers,
    BuyerHolds(&'a str),
}

impl<'a> Route<'a> {
    fn recognise(path: &'a str) -> Option<Self> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let route = match segments.as_slice() {
            [""] => Route::Page,
            ["page", asset] if !asset.is_empty() => Route::PageAsset(asset),
            ["healthz"] => Route::Health,
            ["metrics"] => Route::Metrics,
            ["openapi.json"] => Route::OpenApi,
            ["ws"] => Route::Feed,
            ["socket.io"] | ["socket.io", ""] => Route::SocketIo,
            ["api", "drops"] => Route::Drops,
            ["api", "drops", id] if !id.is_empty() => Route::Drop(id),
            ["api", "drops", id, "waitlist"] if !id.is_empty() => Route::Waitlist(id),
            ["api", "drops", id, "waitlist", "leave"] if !id.is_empty() => Route::LeaveWaitlist(id),
            ["api", "drops", id, "draw"] if !id.is_empty() => Route::Draw(id),
            ["api", "drops", id, "draw", "entries"] if !id.is_empty() => Route::DrawEntries(id),
            ["api", "reservations"] => Route::Holds,
            ["api", "reservations", id, "cancel"] if !id.is_empty() => Route::CancelHold(id),
            ["api", "reservations", id, "extend"] if !id.is_empty() => Route::ExtendHold(id),
            ["api", "purchases"] => Route::Sales,
            ["api", "users"] => Route::Buyers,
            ["api", "users", id, "reservations"] if !id.is_empty() => Route::BuyerHolds(id),
            _ => return None,
        };
        Some(route)
    }

    /// The route's pattern, for metrics labels and logs.
    fn pattern(self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::PageAsset(_) => "/page/{asset}",
            Route::Health => "/healthz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Feed => "/ws",
            Route::SocketIo => "/socket.io/",
            Route::Drops => "/api/drops",
            Route::Drop(_) => "/api/drops/{id}",
            Route::Waitlist(_) => "/api/drops/{id}/waitlist",
            Route::LeaveWaitlist(_) => "/api/drops/{id}/waitlist/leave",
            Route::Draw(_) => "/api/drops/{id}/draw",
            Route::DrawEntries(_) => "/api/drops/{id}/draw/entries",
            Route::Holds => "/api/reservations",
            Route::CancelHold(_) => "/api/reservations/{id}/cancel",
            Route::ExtendHold(_) => "/api/reservations/{id}/extend",
            Route::Sales => "/api/purchases",
            Route::Buyers => "/api/users",
            Route::BuyerHolds(_) => "/api/users/{id}/reservations",
        }
    }

    /// The methods the route takes, for `Allow` on 405 and `OPTIONS`.
    fn allow(self) -> &'static str {
        match self {
            Route::Drops | Route::Waitlist(_) | Route::Draw(_) => "GET, HEAD, POST, OPTIONS",
            Route::SocketIo => "GET, POST, OPTIONS",
            Route::Holds
            | Route::CancelHold(_)
            | Route::ExtendHold(_)
            | Route::Sales
            | Route::Buyers
            | Route::LeaveWaitlist(_)
            | Route::DrawEntries(_) => "POST, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        }
    }
}

/// The service function: answers every request, never fails (errors become responses here), and records
/// the metrics and the CORS headers for all of them.
pub async fn handle(
    request: Request<Incoming>,
    app: Arc<App>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let origin = request.headers().get(header::ORIGIN).cloned();
    let path = request.uri().path().to_owned();
    let beyond_cap = request.extensions().get::<BeyondCap>().is_some();
    let (pattern, outcome) = match Route::recognise(&path) {
        Some(route) if beyond_cap && !matches!(route, Route::Health | Route::Metrics) => (
            route.pattern(),
            Err(ApiError::unavailable(
                "the server is at its connection limit; try again",
            )),
        ),
        Some(route) => {
            let deadline = match route {
                // A long poll waits for something to send by design, a ping interval at most.
                Route::SocketIo => app.timeouts.request + socketio::PING_INTERVAL,
                _ => app.timeouts.request,
            };
            let outcome = tokio::time::timeout(deadline, dispatch(route, &path, request, &app))
                .await
                .unwrap_or_else(|_| {
                    Err(ApiError::unavailable(format!(
                        "no answer within {} s; try again",
                        deadline.as_secs()
                    )))
                });
            (route.pattern(), outcome)
        }
        None => (
            "unmatched",
            Err(ApiError::not_found(format!("no such endpoint: {path}"))),
        ),
    };
    let mut response = outcome.unwrap_or_else(|error| {
        if error.status.is_server_error() {
            tracing::warn!(%method, %path, status = %error.status, message = %error.message, "request failed");
        } else {
            tracing::debug!(%method, %path, status = %error.status, message = %error.message, "request refused");
        }
        error.into_response()
    });
    // A request that found the database unavailable: probes check anew rather than repeat an older "ok"
    // (their own 503s are kept for the second, or an outage would turn every probe into a check).
    if response.status() == StatusCode::SERVICE_UNAVAILABLE && pattern != "/healthz" {
        app.health.forget();
    }
    if beyond_cap {
        // This connection only got in to answer health checks: it is not kept open for more.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    app.cors.decorate(origin.as_ref(), &mut response);
    app.metrics
        .observe(&method, pattern, response.status(), started.elapsed());
    Ok(response)
}

async fn dispatch(
    route: Route<'_>,
    path: &str,
    request: Request<Incoming>,
    app: &Arc<App>,
) -> Result<Response<Body>, ApiError> {
    let method = request.method().clone();
    if method == Method::OPTIONS {
        return app.cors.preflight(request.headers(), route.allow());
    }
    // Load balancers' probes and scrapes are not a client's traffic.
    if !matches!(route, Route::Health | Route::Metrics) {
        app.limits.check_client(request.extensions())?;
    }
    // HEAD is GET without the body (hyper leaves the body out): load balancers probe with it.
    let verb = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    match (route, verb) {
        (Route::Page, Method::GET) => Ok(page::index()),
        (Route::PageAsset(name), Method::GET) => page::asset(name),
        (Route::Health, Method::GET) => health::answer(app).await,
        (Route::Metrics, Method::GET) => Ok(respond::with_type(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.render(),
        )),
        (Route::OpenApi, Method::GET) => Ok(respond::json(StatusCode::OK, &openapi::document())),
        (Route::Feed, Method::GET) => ws::upgrade(request, app.clone()).await,
        (Route::SocketIo, Method::GET | Method::POST) if method != Method::HEAD => {
            app.socketio.handle(request, &app.cors).await
        }
        (Route::Drops, Method::GET) => list_drops(app).await,
        (Route::Drops, Method::POST) => create_drop(request, app).await,
        (Route::Drop(id), Method::GET) => show_drop(id, app).await,
        (Route::Holds, Method::POST) => reserve(request, app).await,
        (Route::CancelHold(id), Method::POST) => {
            change_hold(id, HoldChange::Cancel, request, app).await
        }
        (Route::ExtendHold(id), Method::POST) => {
            change_hold(id, HoldChange::Extend, request, app).await
        }
        (Route::Sales, Method::POST) => buy(request, app).await,
        (Route::Buyers, Method::POST) => create_buyer(request, app).await,
        (Route::BuyerHolds(id), Method::GET) => buyer_holds(id, request, app).await,
        (Route::Waitlist(id), Method::GET) => show_waitlist(id, request, app).await,
        (Route::Waitlist(id), Method::POST) => join_waitlist(id, request, app).await,
        (Route::LeaveWaitlist(id), Method::POST) => leave_waitlist(id, request, app).await,
        (Route::Draw(id), Method::GET) => show_draw(id, app).await,
        (Route::Draw(id), Method::POST) => run_draw(id, request, app).await,
        (Route::DrawEntries(id), Method::POST) => enter_draw(id, request, app).await,
        (route, _) => Err(ApiError::method_not_allowed(&method, path, route.allow())),
    }
}

async fn list_drops(app: &App) -> Result<Response<Body>, ApiError> {
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::OK,
        queries::active_drops(&client).await?,
    ))
}

async fn show_drop(id: &str, app: &App) -> Result<Response<Body>, ApiError> {
    let drop_id = parse_uuid("drop id", id)?;
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::OK,
        queries::drop_status(&client, drop_id).await?,
    ))
}

async fn create_drop(request: Request<Incoming>, app: &App) -> Result<Response<Body>, ApiError> {
    app.access.require_drop_creator(request.headers())?;
    let fields = Fields::read(request, app.timeouts.body).await?;
    let variants = fields.optional_object("variants")?;
    let drop = NewDrop {
        name: fields.string("name")?,
        price: fields.decimal("price")?,
        // The sizes' stock adds up to the total; without sizes it is required, as it always was.
        total_stock: match variants {
            Some(_) => fields.optional_integer("totalStock")?,
            None => Some(fields.integer("totalStock")?),
        },
        starts_at: fields.optional_timestamp("startsAt")?,
        ends_at: fields.optional_timestamp("endsAt")?,
        hold_seconds: fields.optional_integer("holdSeconds")?,
        per_buyer_limit: fields.optional_integer("perUserLimit")?,
        variants,
        max_extensions: fields.optional_integer("maxExtensions")?,
        mode: fields.optional_string("mode")?,
        cooldown_seconds: fields.optional_integer("cooldownSeconds")?,
    };
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::CREATED,
        queries::create_drop(&client, &drop).await?,
    ))
}

async fn create_buyer(request: Request<Incoming>, app: &App) -> Result<Response<Body>, ApiError> {
    // With buyer tokens, the host application issues them and so decides who the buyers are.
    if app.access.jwt_mode() {
        app.access
            .require_admin(request.headers(), "creating buyers (in JWT mode)")?;
    }
    let headers = request.headers().clone();
    let fields = Fields::read(request, app.timeouts.body).await?;
    let username = fields.string("username")?;
    // A chosen id (an existing client's fixed buyer id) is an operator's decision, never a buyer's.
    let id = fields.optional_uuid("id")?;
    if id.is_some() {
        app.access
            .require_admin(&headers, "creating a buyer with a given id")?;
    }
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::CREATED,
        queries::create_buyer(&client, &username, id).await?,
    ))
}

async fn reserve(request: Request<Incoming>, app: &App) -> Result<Response<Body>, ApiError> {
    let identity = app.access.authenticate(request.headers())?;
    let fields = Fields::read(request, app.timeouts.body).await?;
    let drop_id = fields.uuid("dropId")?;
    let buyer = identity.resolve(fields.optional_uuid("userId")?)?;
    let asked = Asked {
        buyer,
        variant: fields.optional_string("variant")?,
        quantity: fields.optional_integer("quantity")?.unwrap_or(1),
    };
    // Before the per-buyer rate limit, which is there to spare the database: this answer does not
    // reach it, and a crowd of new buyers would fill the limiter's table for nothing.
    if let Some(sold_out) = app.sold_out.refuse(drop_id, &asked) {
        app.metrics.sold_out_shortcut.inc();
        return Err(sold_out);
    }
    app.limits.check_buyer(buyer)?;
    // Batched with whoever else is reserving this drop right now: one commit serves them all.
    let reserved = app.holds.reserve(drop_id, asked).await?;
    app.sold_out.note_buyer(drop_id, buyer);
    // A retry gets its hold back with 200, so a client can tell "reserved now" from "already yours".
    let status = if reserved.fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond::success(status, reserved.hold))
}

async fn buy(request: Request<Incoming>, app: &App) -> Result<Response<Body>, ApiError> {
    let identity = app.access.authenticate(request.headers())?;
    let fields = Fields::read(request, app.timeouts.body).await?;
    let hold_id = fields.uuid("reservationId")?;
    let buyer = identity.resolve(fields.optional_uuid("userId")?)?;
    app.limits.check_buyer(buyer)?;
    let client = app.pool.connection().await?;
    let sale = queries::buy(&client, hold_id, buyer).await?;
    Ok(respond::success_with_message(
        StatusCode::OK,
        "Purchased successfully",
        sale,
    ))
}

/// Cancel or extend: the buyer's own hold, changed.
async fn change_hold(
    id: &str,
    change: HoldChange,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let hold_id = parse_uuid("reservation id", id)?;
    let identity = app.access.authenticate(request.headers())?;
    let fields = Fields::read(request, app.timeouts.body).await?;
    let buyer = identity.resolve(fields.optional_uuid("userId")?)?;
    app.limits.check_buyer(buyer)?;
    let client = app.pool.connection().await?;
    let cancelling = matches!(change, HoldChange::Cancel);
    let hold = queries::change_hold(&client, change, hold_id, buyer).await?;
    if cancelling {
        app.sold_out.changed_here(hold.drop_id);
    }
    Ok(respond::success(StatusCode::OK, hold))
}

/// 201 for what this request made, 200 for what the buyer had already (a retry, or a second press).
fn made_or_found(fresh: bool) -> StatusCode {
    if fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// What a buyer asks a waiting list or a draw for: `variant` (one size) or `variants` (any of several),
/// never both, and a number of units.
fn sizes_and_units(fields: &Fields) -> Result<(Sizes, i32), ApiError> {
    let sizes = match (
        fields.optional_string("variant")?,
        fields.optional_strings("variants")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give variant (one size) or variants (any of several), not both",
            ))
        }
        (None, Some(labels)) => Sizes::AnyOf(labels),
        (label, None) => Sizes::One(label),
    };
    Ok((sizes, fields.optional_integer("quantity")?.unwrap_or(1)))
}

/// What a buyer's action on a drop reads first: the drop from the path, the body, and the buyer it acts
/// for (the body's `userId`, as the access mode allows), whose rate limit it then counts against.
async fn buyer_action(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<(Uuid, Uuid, Fields), ApiError> {
    let drop_id = parse_uuid("drop id", id)?;
    let identity = app.access.authenticate(request.headers())?;
    let fields = Fields::read(request, app.timeouts.body).await?;
    let buyer = identity.resolve(fields.optional_uuid("userId")?)?;
    app.limits.check_buyer(buyer)?;
    Ok((drop_id, buyer, fields))
}

/// `POST /api/drops/{id}/waitlist`: a place in the drop's line, or the one the buyer has.
async fn join_waitlist(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let (drop_id, buyer, fields) = buyer_action(id, request, app).await?;
    let (sizes, quantity) = sizes_and_units(&fields)?;
    let client = app.pool.connection().await?;
    let entry = queries::join_waitlist(&client, drop_id, buyer, &sizes, quantity).await?;
    // Others are now told to join the line, not "sold out", before the notice that says so.
    app.sold_out.changed_here(drop_id);
    Ok(respond::success(made_or_found(entry.fresh), entry))
}

async fn leave_waitlist(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let (drop_id, buyer, _) = buyer_action(id, request, app).await?;
    let client = app.pool.connection().await?;
    let left = queries::leave_waitlist(&client, drop_id, buyer).await?;
    Ok(respond::success(
        StatusCode::OK,
        LeftView {
            drop_id,
            buyer_id: buyer,
            left,
        },
    ))
}

/// `GET /api/drops/{id}/waitlist[?userId=]`: the line's length, and the buyer's place in it when a
/// buyer is named (by `userId`, or by the token in JWT mode).
async fn show_waitlist(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let drop_id = parse_uuid("drop id", id)?;
    let named = query_value(request.uri().query(), "userId")
        .filter(|value| !value.is_empty())
        .map(|value| parse_uuid("userId", &value))
        .transpose()?;
    let buyer = app
        .access
        .authenticate_if_any(request.headers())?
        .resolve_if_any(named)?;
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::OK,
        queries::waitlist(&client, drop_id, buyer).await?,
    ))
}

async fn enter_draw(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let (drop_id, buyer, fields) = buyer_action(id, request, app).await?;
    let (sizes, quantity) = sizes_and_units(&fields)?;
    let client = app.pool.connection().await?;
    let entry = queries::enter_draw(&client, drop_id, buyer, &sizes, quantity).await?;
    Ok(respond::success(made_or_found(entry.fresh), entry))
}

async fn show_draw(id: &str, app: &App) -> Result<Response<Body>, ApiError> {
    let drop_id = parse_uuid("drop id", id)?;
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::OK,
        queries::draw(&client, drop_id).await?,
    ))
}

/// `POST /api/drops/{id}/draw`: an operator draws now (entries must have closed) rather than waiting
/// for the worker, optionally with a seed of their choosing (announced beforehand, say).
async fn run_draw(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let drop_id = parse_uuid("drop id", id)?;
    app.access
        .require_admin(request.headers(), "running a draw")?;
    let fields = Fields::read(request, app.timeouts.body).await?;
    let seed = fields.optional_string("seed")?;
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::CREATED,
        queries::run_draw(&client, drop_id, seed.as_deref()).await?,
    ))
}

/// `GET /api/users/{id}/reservations`: the buyer's live holds, offers among them. As private as the
/// answers to a buyer's own requests: in JWT mode only the buyer's own token reads them.
async fn buyer_holds(
    id: &str,
    request: Request<Incoming>,
    app: &App,
) -> Result<Response<Body>, ApiError> {
    let named = parse_uuid("user id", id)?;
    let buyer = app
        .access
        .authenticate(request.headers())?
        .resolve(Some(named))?;
    let client = app.pool.connection().await?;
    Ok(respond::success(
        StatusCode::OK,
        queries::buyer_holds(&client, buyer).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_routes_and_their_parameters() {
        assert!(matches!(Route::recognise("/"), Some(Route::Page)));
        assert!(matches!(
            Route::recognise("/api/drops/abc"),
            Some(Route::Drop("abc"))
        ));
        assert!(matches!(
            Route::recognise("/api/reservations/abc/cancel"),
            Some(Route::CancelHold("abc"))
        ));
        assert!(matches!(
            Route::recognise("/api/drops/abc/waitlist/leave"),
            Some(Route::LeaveWaitlist("abc"))
        ));
        assert!(matches!(
            Route::recognise("/api/users/abc/reservations"),
            Some(Route::BuyerHolds("abc"))
        ));
        assert!(Route::recognise("/api/drops//draw").is_none());
        assert!(Route::recognise("/api/drops/").is_none());
        assert!(Route::recognise("/api/drops/a/b").is_none());
        assert!(Route::recognise("/nope").is_none());
    }
}
