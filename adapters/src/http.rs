//! The node's HTTP server: the REST API (`/api/v1/...`, described by an OpenAPI
//! document generated from these handlers), Prometheus metrics (`/metrics`), health
//! probes and the dashboard.
//!
//! The REST API is a second door to the same operations, not a second implementation:
//! each request runs through a cluster [`Client`] connected to this node with the
//! caller's bearer token, so the wire server checks the token and role exactly as for
//! any client, requests are routed to the right replica, and retries across view changes
//! behave alike. What the node answers itself (`/metrics`, `/api/v1/events`) checks the
//! token against the same configured tokens. Errors are JSON `{"code", "message"}` with
//! the wire protocol's stable codes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use squall_kvs::{Condition, PoolSpec, StoreKind};
use squall_platform::Version;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tracing::{info, warn};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::client::{Client, ClientError, Policy, Written};
use crate::config::Role;
use crate::udl::{PythonManifest, python_bundle, python_udl_uuid};
use crate::wire::{At, ErrorCode, WireObject};
use prometheus::proto::MetricType;

/// Cached clients (one per distinct token) at most; beyond it the oldest is dropped.
const CLIENTS_MAX: usize = 64;
/// Seconds between two `stats` events of `/api/v1/events`.
const EVENTS_INTERVAL_MS: u64 = 1000;

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub node: u32,
    /// This node's client address first, then the other nodes'.
    pub client_addrs: Vec<String>,
    /// Tokens and their roles; none = open access (as the wire server).
    pub tokens: Vec<(String, Role)>,
    /// The largest request body accepted (an object plus headroom).
    pub body_bytes_max: usize,
    pub registry: prometheus::Registry,
    /// Views and shards as this node's service keeps them.
    pub status: crate::metrics::SharedStatus,
    /// Links to remote clusters, as this node's forwarders and outbox know them.
    pub wan_links: crate::wan::SharedLinks,
    /// GPU detection and this node's GPU caches.
    pub gpu: crate::gpu::NodeGpu,
}

struct AppState {
    cfg: HttpConfig,
    clients: Mutex<Vec<(Option<String>, Client)>>,
}

/// Serves HTTP on `listener` until the process ends.
pub async fn serve(listener: TcpListener, cfg: HttpConfig) {
    let body_max = cfg.body_bytes_max;
    let state = Arc::new(AppState {
        cfg,
        clients: Mutex::new(Vec::new()),
    });
    let app = router(state).layer(DefaultBodyLimit::max(body_max));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP: REST API, metrics and dashboard");
    }
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the HTTP server stopped");
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/members", get(members))
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route("/api/v1/pools/{*path}", get(find_pool).delete(remove_pool))
        .route("/api/v1/keys", get(list_keys))
        .route("/api/v1/compact", axum::routing::post(compact))
        .route(
            "/api/v1/objects/{*key}",
            get(get_object).put(put_object).delete(remove_object),
        )
        .route("/api/v1/udls", get(list_udls).post(upload_udl))
        .route("/api/v1/udls/{uuid}", axum::routing::delete(remove_udl))
        .route("/api/v1/dfgs", get(list_dfgs).post(add_dfgs))
        .route("/api/v1/dfgs/{id}", axum::routing::delete(remove_dfg))
        .route("/api/v1/events", get(events))
        .route("/api/v1/node", get(node_status))
        .route("/api/v1/views", get(views))
        .route("/", get(dashboard_index))
        .route("/assets/{*file}", get(dashboard_asset))
        .fallback(not_found)
        .with_state(state)
}

// ----- errors ----------------------------------------------------------------------------

/// Every error: a stable code (the wire protocol's) and a message for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable: match on it (`no_such_pool`, `conflict`, `too_large`, ...).
    pub code: String,
    pub message: String,
    /// For `conflict`: the version that made the condition fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
    Failure(
        status,
        ApiError {
            code: code.to_string(),
            message: message.into(),
            current_version: None,
        },
    )
}

fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        BadRequest | InvalidKey | InvalidPool | NotVersioned | InvalidDfg | InvalidPlugin => {
            StatusCode::BAD_REQUEST
        }
        Unauthenticated => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        NoPoolForKey | NoSuchPool | NoSuchKey | NoSuchUdl | NoSuchDfg => StatusCode::NOT_FOUND,
        PoolExists | NestedPool | Conflict | PoolChanged => StatusCode::CONFLICT,
        TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        NotHere | Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        OutboxFull => StatusCode::TOO_MANY_REQUESTS,
        StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        Compacted => StatusCode::GONE,
        Internal | UdlFailed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match &e {
            ClientError::Server {
                code,
                message,
                current,
            } => Failure(
                status_of(*code),
                ApiError {
                    code: code.name().to_string(),
                    message: message.clone(),
                    current_version: current.map(|v| v.0),
                },
            ),
            ClientError::Refused { .. } => {
                failure(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            ClientError::Protocol { .. } => {
                failure(StatusCode::BAD_GATEWAY, "protocol", e.to_string())
            }
            ClientError::Connect { .. } | ClientError::Unavailable { .. } => failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

type ApiResult<T> = Result<T, Failure>;

/// The errors any operation may answer, documented once for the OpenAPI document (the
/// body is always an [`ApiError`]; its `code` says which).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only read by the OpenAPI derive
enum ErrorResponses {
    #[response(status = 400, description = "Bad input (see `code`)")]
    BadRequest(ApiError),
    #[response(status = 401, description = "No or unknown token")]
    Unauthenticated(ApiError),
    #[response(status = 403, description = "The token's role does not allow it")]
    Forbidden(ApiError),
    #[response(status = 404, description = "No such key, pool, UDL or DFG")]
    NotFound(ApiError),
    #[response(
        status = 410,
        description = "A read of the past before its pool's compaction point (`compacted`)"
    )]
    Compacted(ApiError),
    #[response(status = 413, description = "Over the node's size limits")]
    TooLarge(ApiError),
    #[response(
        status = 429,
        description = "The WAN outbox towards a remote site is full (`outbox_full`)"
    )]
    OutboxFull(ApiError),
    #[response(
        status = 507,
        description = "A node that would log the write is under its disk reserve (`storage_full`)"
    )]
    StorageFull(ApiError),
    #[response(status = 503, description = "No node could serve it now; retry")]
    Unavailable(ApiError),
}

/// Extractors whose rejections are `ApiError`s too (axum's own answer in plain text).
struct ApiJson<T>(T);
struct ApiQuery<T>(T);
struct ApiPath(String);
struct ApiBody(Body);

fn rejected(status: StatusCode, message: String) -> Failure {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        _ => "bad_request",
    };
    failure(status, code, message)
}

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        Body::from_request(req, state)
            .await
            .map(ApiBody)
            .map_err(|e| rejected(e.status(), e.body_text()))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let ApiBody(body) = ApiBody::from_request(req, state).await?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| rejected(e.status(), e.body_text()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| rejected(e.status(), e.body_text()))
    }
}

async fn not_found() -> Failure {
    failure(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

// ----- auth and clients ------------------------------------------------------------------

fn bearer(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
    match text {
        Some(t) if !t.is_empty() => Ok(Some(t.trim().to_string())),
        _ => Err(failure(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

impl AppState {
    /// The role a token has here (what the node checks by itself).
    fn role(&self, headers: &HeaderMap) -> ApiResult<Role> {
        let token = bearer(headers)?;
        if self.cfg.tokens.is_empty() {
            return Ok(Role::Admin);
        }
        let token = token.ok_or_else(|| {
            failure(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this cluster requires a bearer token",
            )
        })?;
        self.cfg
            .tokens
            .iter()
            .find(|(t, _)| t.as_bytes() == token.as_bytes())
            .map(|(_, r)| *r)
            .ok_or_else(|| failure(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown token"))
    }

    /// A copy of what the service keeps about views and shards.
    fn status(&self) -> crate::metrics::NodeStatus {
        let mut status = self
            .cfg
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.wan = self
            .cfg
            .wan_links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        status.gpu = self.cfg.gpu.status();
        status
    }

    /// A client of this node speaking with the caller's token (cached per token).
    async fn client(&self, headers: &HeaderMap) -> ApiResult<Client> {
        let token = bearer(headers)?;
        let mut clients = self.clients.lock().await;
        if let Some((_, c)) = clients.iter().find(|(t, _)| *t == token) {
            return Ok(c.clone());
        }
        let client = Client::connect(&self.cfg.client_addrs, token.clone(), Policy::default())
            .await
            .map_err(Failure::from)?;
        if clients.len() >= CLIENTS_MAX {
            clients.remove(0);
        }
        clients.push((token, client.clone()));
        Ok(client)
    }
}

// ----- schemas ---------------------------------------------------------------------------

/// A version as the CLI prints it (`v<view>:<seq>`) and as a number.
fn version_text(v: Version) -> String {
    v.to_string()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WrittenBody {
    /// The shard version the write got.
    pub version: u64,
    /// `v<view>:<seq>`.
    pub version_text: String,
    pub timestamp_us: u64,
}

impl From<Written> for WrittenBody {
    fn from(w: Written) -> Self {
        WrittenBody {
            version: w.version.0,
            version_text: version_text(w.version),
            timestamp_us: w.timestamp_us,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ObjectBody {
    pub key: String,
    pub version: u64,
    pub version_text: String,
    pub timestamp_us: u64,
    pub previous_version: Option<u64>,
    pub previous_version_by_key: Option<u64>,
    /// The value's length in bytes.
    pub size: u64,
    /// The value, base64 (standard alphabet, padded).
    pub value_base64: String,
    /// The value as text, when it is UTF-8.
    pub value_text: Option<String>,
}

impl From<WireObject> for ObjectBody {
    fn from(o: WireObject) -> Self {
        ObjectBody {
            key: o.key,
            version: o.version.0,
            version_text: version_text(o.version),
            timestamp_us: o.timestamp_us,
            previous_version: o.previous_version.map(|v| v.0),
            previous_version_by_key: o.previous_key_version.map(|v| v.0),
            size: o.blob.len() as u64,
            value_base64: base64::engine::general_purpose::STANDARD.encode(&o.blob),
            value_text: std::str::from_utf8(&o.blob).ok().map(str::to_string),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberBody {
    pub node: u32,
    pub incarnation: u32,
    pub client_addr: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembersBody {
    pub view_id: u32,
    pub members: Vec<MemberBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolBody {
    /// The pool's key prefix (an absolute path).
    pub path: String,
    /// `volatile`, `persistent` or `trigger`.
    pub kind: String,
    /// The data subgroup holding it (default: the first of its kind).
    #[serde(default)]
    pub subgroup: Option<u32>,
    /// Shards it spreads over (0 or absent: all of its subgroup's).
    #[serde(default)]
    pub shards: Option<u32>,
    /// Keys whose matches of this regex are equal share a shard.
    #[serde(default)]
    pub affinity: Option<String>,
    /// Keys pinned to a shard.
    #[serde(default)]
    pub overrides: Option<std::collections::BTreeMap<String, u32>>,
    /// Keep the pool's objects cached on a GPU (persistent and volatile pools only);
    /// absent: not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_cache: Option<GpuCacheBody>,
}

/// A compaction: forget pool `pool`'s history before `before_us`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactBody {
    /// A persistent pool's path.
    pub pool: String,
    /// µs since the Unix epoch; absent: now (keep each key's latest value only).
    #[serde(default)]
    pub before_us: Option<u64>,
}

/// What one shard of the pool forgot.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShardCompactedBody {
    pub shard: u32,
    /// The shard version compacted to; absent: nothing in the shard was that old.
    pub through: Option<u64>,
    /// `through` as `v<view>:<seq>`.
    pub through_text: Option<String>,
    /// Its timestamp, µs since the Unix epoch.
    pub timestamp_us: u64,
    pub versions_dropped: u64,
    pub keys_dropped: u64,
}

/// A pool's `gpu_cache` option: `{"device": 0, "capacity": "8GiB"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuCacheBody {
    /// The CUDA device ordinal (on a node without a GPU the pool is served from host
    /// memory).
    pub device: u32,
    /// The cache's capacity: a number of bytes, or a string with a unit (`"8GiB"`,
    /// `"512MiB"`, `"2GB"`); answered as a string.
    #[schema(value_type = String, example = "8GiB")]
    pub capacity: squall_gpu::ByteSize,
}

impl From<squall_kvs::GpuCache> for GpuCacheBody {
    fn from(gpu_cache: squall_kvs::GpuCache) -> Self {
        GpuCacheBody {
            device: gpu_cache.device,
            capacity: squall_gpu::ByteSize::from_bytes(gpu_cache.capacity_bytes),
        }
    }
}

impl From<PoolSpec> for PoolBody {
    fn from(p: PoolSpec) -> Self {
        PoolBody {
            path: p.path,
            kind: p.kind.name().to_string(),
            subgroup: Some(p.subgroup),
            shards: Some(p.shards),
            affinity: p.affinity,
            overrides: Some(p.overrides),
            gpu_cache: p.gpu_cache.map(GpuCacheBody::from),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeysBody {
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadedBody {
    /// The UUID DFGs name the UDL by (for Python UDLs; a plugin's comes from the library,
    /// see `GET /api/v1/udls`).
    pub uuid: Option<String>,
    pub name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct KeysQuery {
    /// The prefix to list: within a pool, or above several (`/` lists every pool).
    pub prefix: String,
    /// List as of this time (µs), persistent pools.
    pub time_us: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct GetQuery {
    /// As of this shard version.
    pub version: Option<u64>,
    /// As of this time (µs).
    pub time_us: Option<u64>,
    /// The latest version durable on every replica.
    pub stable: Option<bool>,
    /// `raw`: the value's bytes as the body (metadata in `X-Squall-*` headers).
    pub format: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PutQuery {
    /// Only if the key's latest version is this one.
    pub if_version: Option<u64>,
    /// Only if the key does not exist.
    pub if_absent: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct UploadQuery {
    /// A name to list the UDL by.
    pub name: Option<String>,
    /// Python UDLs: `Class` or `module:Class`; the body is then the module's source
    /// (or a zip of a package with `format=zip`).
    pub entry: Option<String>,
    /// Python UDLs: the module name (default `udl`).
    pub module: Option<String>,
    /// Python UDLs: `py` (default) or `zip`.
    pub format: Option<String>,
    /// Python UDLs: the UUID (default: derived from module and class).
    pub uuid: Option<String>,
}

// ----- handlers --------------------------------------------------------------------------

fn key_of(captured: &str) -> String {
    format!("/{}", captured.trim_start_matches('/'))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once this node can serve: it answers a membership query through its own door.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let addrs = &state.cfg.client_addrs[..1];
    let token = state.cfg.tokens.first().map(|(t, _)| t.clone());
    let ready = tokio::time::timeout(Duration::from_secs(2), async {
        let client = Client::connect(addrs, token, Policy::Fixed).await.ok()?;
        client.members().await.ok()
    })
    .await
    .ok()
    .flatten();
    match ready {
        Some((view, _)) => (StatusCode::OK, format!("ready (view {view})")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    state.role(&headers)?;
    let families = state.cfg.registry.gather();
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut text)
        .map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_json().unwrap_or_default(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/members", responses((status = 200, body = MembersBody), ErrorResponses))]
async fn members(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<MembersBody>> {
    let (view_id, members) = state.client(&headers).await?.members().await?;
    Ok(Json(MembersBody {
        view_id,
        members: members
            .into_iter()
            .map(|m| MemberBody {
                node: m.node,
                incarnation: m.incarnation,
                client_addr: m.client_addr,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = Vec<PoolBody>), ErrorResponses))]
async fn list_pools(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<PoolBody>>> {
    let pools = state.client(&headers).await?.list_pools().await?;
    Ok(Json(pools.into_iter().map(PoolBody::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/pools", request_body = PoolBody, responses((status = 201, body = PoolBody), (status = 409, body = ApiError), ErrorResponses))]
async fn create_pool(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PoolBody>,
) -> ApiResult<(StatusCode, Json<PoolBody>)> {
    let kind = StoreKind::parse(&body.kind).ok_or_else(|| {
        failure(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "kind {:?}: expected volatile, persistent or trigger",
                body.kind
            ),
        )
    })?;
    let client = state.client(&headers).await?;
    let subgroup = match body.subgroup {
        Some(g) => g,
        None => client
            .list_pools()
            .await?
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.subgroup)
            .min()
            .ok_or_else(|| {
                failure(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "no {} pool exists to learn its subgroup from: give subgroup",
                        kind.name()
                    ),
                )
            })?,
    };
    let mut spec = PoolSpec::new(body.path.clone(), kind, subgroup);
    spec.shards = body.shards.unwrap_or(0);
    spec.affinity = body.affinity.clone();
    spec.overrides = body.overrides.clone().unwrap_or_default();
    if let Some(gpu_cache) = &body.gpu_cache {
        let checked = squall_gpu::GpuCacheSpec::new(gpu_cache.device, gpu_cache.capacity)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
        spec.gpu_cache = Some(squall_kvs::GpuCache {
            device: checked.device,
            capacity_bytes: checked.capacity.bytes(),
        });
    }
    client.create_pool(spec.clone()).await?;
    Ok((StatusCode::CREATED, Json(PoolBody::from(spec))))
}

#[utoipa::path(post, path = "/api/v1/compact", request_body = CompactBody,
    responses((status = 200, description = "Per shard of the pool, what it forgot: each key keeps its later versions or, if not written since, its value then; reads of earlier points answer 410 `compacted`", body = Vec<ShardCompactedBody>), ErrorResponses))]
async fn compact(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CompactBody>,
) -> ApiResult<Json<Vec<ShardCompactedBody>>> {
    let before_us = body.before_us.unwrap_or_else(crate::client::now_us);
    let done = state
        .client(&headers)
        .await?
        .compact(&body.pool, before_us)
        .await?;
    Ok(Json(
        done.into_iter()
            .map(|c| ShardCompactedBody {
                shard: c.shard,
                through: c.through.map(|v| v.0),
                through_text: c.through.map(|v| v.to_string()),
                timestamp_us: c.timestamp_us,
                versions_dropped: c.versions_dropped,
                keys_dropped: c.keys_dropped,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/pools/{path}", params(
    ("path" = String, Path, description = "A key or pool path (without its leading slash)")),
    responses((status = 200, body = PoolBody), ErrorResponses))]
async fn find_pool(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(path): ApiPath,
) -> ApiResult<Json<PoolBody>> {
    let pool = state
        .client(&headers)
        .await?
        .find_pool(&key_of(&path))
        .await?;
    Ok(Json(PoolBody::from(pool)))
}

/// Removes the pool and its objects; again, it finishes a removal that was interrupted.
#[utoipa::path(delete, path = "/api/v1/pools/{path}", params(
    ("path" = String, Path, description = "The pool's path (without its leading slash)")),
    responses((status = 204), ErrorResponses))]
async fn remove_pool(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(path): ApiPath,
) -> ApiResult<StatusCode> {
    state
        .client(&headers)
        .await?
        .remove_pool(&key_of(&path))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/keys", params(KeysQuery), responses((status = 200, body = KeysBody), ErrorResponses))]
async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<KeysQuery>,
) -> ApiResult<Json<KeysBody>> {
    let keys = state
        .client(&headers)
        .await?
        .list_keys(&q.prefix, q.time_us)
        .await?;
    Ok(Json(KeysBody { keys }))
}

#[utoipa::path(get, path = "/api/v1/objects/{key}", params(
    ("key" = String, Path, description = "The key without its leading slash"), GetQuery),
    responses((status = 200, body = ObjectBody), ErrorResponses))]
async fn get_object(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(key): ApiPath,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> ApiResult<Response> {
    let key = key_of(&key);
    let at = match (q.version, q.time_us, q.stable.unwrap_or(false)) {
        (None, None, false) => At::Latest,
        (Some(v), None, false) => At::Version(Version(v)),
        (None, Some(t), false) => At::Time(t),
        (None, None, true) => At::Stable,
        _ => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give at most one of version, time_us and stable",
            ));
        }
    };
    let object = state.client(&headers).await?.get_at(&key, at).await?;
    let Some(object) = object else {
        return Err(failure(
            StatusCode::NOT_FOUND,
            "no_such_key",
            format!("{key}: no value"),
        ));
    };
    if q.format.as_deref() == Some("raw") {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-squall-version", object.version.0.to_string()),
            ("x-squall-timestamp-us", object.timestamp_us.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok((h, object.blob).into_response());
    }
    Ok(Json(ObjectBody::from(object)).into_response())
}

#[utoipa::path(put, path = "/api/v1/objects/{key}", params(
    ("key" = String, Path, description = "The key without its leading slash"), PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = WrittenBody), (status = 409, body = ApiError), ErrorResponses))]
async fn put_object(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(key): ApiPath,
    ApiQuery(q): ApiQuery<PutQuery>,
    ApiBody(body): ApiBody,
) -> ApiResult<Json<WrittenBody>> {
    let condition = match (q.if_version, q.if_absent.unwrap_or(false)) {
        (None, false) => Condition::Always,
        (Some(v), false) => Condition::KeyVersion(Some(Version(v))),
        (None, true) => Condition::KeyVersion(None),
        (Some(_), true) => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give if_version or if_absent, not both",
            ));
        }
    };
    let written = state
        .client(&headers)
        .await?
        .put_if(&key_of(&key), body, condition)
        .await?;
    Ok(Json(WrittenBody::from(written)))
}

#[utoipa::path(delete, path = "/api/v1/objects/{key}", params(
    ("key" = String, Path, description = "The key without its leading slash")),
    responses((status = 200, body = WrittenBody), ErrorResponses))]
async fn remove_object(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(key): ApiPath,
) -> ApiResult<Json<WrittenBody>> {
    let written = state.client(&headers).await?.remove(&key_of(&key)).await?;
    Ok(Json(WrittenBody::from(written)))
}

fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

#[utoipa::path(get, path = "/api/v1/udls", responses((status = 200, description = "The stored UDLs, with this node's invocation and error counts",
     body = Vec<serde_json::Value>), ErrorResponses))]
async fn list_udls(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    Ok(json_text(state.client(&headers).await?.list_udls().await?))
}

#[utoipa::path(post, path = "/api/v1/udls", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "A plugin library (.so), or a Python UDL's source with `entry`"),
    responses((status = 201, body = UploadedBody), ErrorResponses))]
async fn upload_udl(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<UploadQuery>,
    ApiBody(body): ApiBody,
) -> ApiResult<(StatusCode, Json<UploadedBody>)> {
    let name = q.name.clone().unwrap_or_else(|| "uploaded".to_string());
    let (uuid, plugin) = match &q.entry {
        None => (None, body),
        Some(entry) => {
            let (module, class) = match entry.split_once(':') {
                Some((m, c)) => (m.to_string(), c.to_string()),
                None => (
                    q.module.clone().unwrap_or_else(|| "udl".to_string()),
                    entry.clone(),
                ),
            };
            let uuid = q
                .uuid
                .clone()
                .unwrap_or_else(|| python_udl_uuid(&module, &class));
            let manifest = PythonManifest {
                uuid: uuid.clone(),
                module,
                entry_class: class,
                format: q.format.clone().unwrap_or_else(|| "py".to_string()),
                description: String::new(),
            };
            (Some(uuid), Bytes::from(python_bundle(&manifest, &body)))
        }
    };
    state
        .client(&headers)
        .await?
        .upload_udl(&name, plugin)
        .await?;
    Ok((StatusCode::CREATED, Json(UploadedBody { uuid, name })))
}

#[utoipa::path(delete, path = "/api/v1/udls/{uuid}", params(("uuid" = String, Path)),
    responses((status = 204), ErrorResponses))]
async fn remove_udl(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(uuid): ApiPath,
) -> ApiResult<StatusCode> {
    state.client(&headers).await?.remove_udl(&uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/dfgs", responses((status = 200, description = "The DFGs in force, as Cascade's dfgs.json", body = Vec<serde_json::Value>), ErrorResponses))]
async fn list_dfgs(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    Ok(json_text(state.client(&headers).await?.list_dfgs().await?))
}

#[utoipa::path(post, path = "/api/v1/dfgs",
    request_body(content = Vec<serde_json::Value>, description = "Cascade's dfgs.json"),
    responses((status = 201), ErrorResponses))]
async fn add_dfgs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> ApiResult<StatusCode> {
    state.client(&headers).await?.add_dfgs(body).await?;
    Ok(StatusCode::CREATED)
}

#[utoipa::path(delete, path = "/api/v1/dfgs/{id}", params(("id" = String, Path)),
    responses((status = 204), ErrorResponses))]
async fn remove_dfg(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(id): ApiPath,
) -> ApiResult<StatusCode> {
    state.client(&headers).await?.remove_dfg(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/node", responses((status = 200, description = "This node, its views and the current view's shards", body = crate::metrics::NodeStatus), ErrorResponses))]
async fn node_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::metrics::NodeStatus>> {
    state.role(&headers)?;
    Ok(Json(state.status()))
}

#[utoipa::path(get, path = "/api/v1/views", responses((status = 200, description = "The views this node installed, oldest first", body = Vec<crate::metrics::ViewRecord>), ErrorResponses))]
async fn views(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::metrics::ViewRecord>>> {
    state.role(&headers)?;
    Ok(Json(state.status().views))
}

async fn dashboard_index() -> Response {
    crate::dashboard::asset("index.html")
}

async fn dashboard_asset(Path(file): Path<String>) -> Response {
    crate::dashboard::asset(&file)
}

/// Live updates: a `stats` event every second with the view and this node's metrics
/// (the dashboard's feed).
async fn events(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    state.role(&headers)?;
    let client = state.client(&headers).await?;
    let registry = state.cfg.registry.clone();
    let node = state.cfg.node;
    let stream = futures_util::stream::unfold(
        (client, registry, true),
        move |(client, registry, first)| async move {
            if !first {
                tokio::time::sleep(Duration::from_millis(EVENTS_INTERVAL_MS)).await;
            }
            let view = client.members().await.ok();
            let snapshot = serde_json::json!({
                "node": node,
                "view_id": view.as_ref().map(|(v, _)| *v),
                "members": view.map(|(_, m)| m.into_iter().map(|m| serde_json::json!({
                    "node": m.node, "incarnation": m.incarnation, "client_addr": m.client_addr,
                })).collect::<Vec<_>>()),
                "metrics": metric_values(&registry),
            });
            let event = Event::default().event("stats").data(snapshot.to_string());
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (client, registry, false),
            ))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Counter and gauge values by name and labels (histograms: their count and sum).
fn metric_values(registry: &prometheus::Registry) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for family in registry.gather() {
        for m in family.get_metric() {
            let labels: Vec<String> = m
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect();
            let name = if labels.is_empty() {
                family.name().to_string()
            } else {
                format!("{}{{{}}}", family.name(), labels.join(","))
            };
            match family.get_field_type() {
                MetricType::COUNTER => {
                    out.insert(name, m.get_counter().get_value());
                }
                MetricType::GAUGE => {
                    out.insert(name, m.get_gauge().get_value());
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    out.insert(format!("{name}:count"), h.get_sample_count() as f64);
                    out.insert(format!("{name}:sum"), h.get_sample_sum());
                }
                _ => {}
            }
        }
    }
    out
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Squall REST API",
        description = "Every client operation of a Squall cluster over HTTP: objects (put, get by version, time or stability, remove), keys, pools, members, UDLs and DFGs. Errors are `ApiError` with a stable `code`. Send `Authorization: Bearer <token>` when the cluster has tokens."
    ),
    paths(
        members,
        list_pools,
        create_pool,
        find_pool,
        remove_pool,
        compact,
        list_keys,
        get_object,
        put_object,
        remove_object,
        list_udls,
        upload_udl,
        remove_udl,
        list_dfgs,
        add_dfgs,
        remove_dfg,
        node_status,
        views
    ),
    components(schemas(
        ApiError,
        WrittenBody,
        ObjectBody,
        MemberBody,
        MembersBody,
        PoolBody,
        CompactBody,
        ShardCompactedBody,
        GpuCacheBody,
        KeysBody,
        UploadedBody,
        crate::metrics::NodeStatus,
        crate::metrics::ViewRecord,
        crate::metrics::ShardStatus,
        crate::gpu::GpuStatus,
        crate::gpu::GpuDeviceStatus,
        crate::gpu::GpuCacheStatus,
        crate::gpu::GpuModelStatus
    ))
)]
struct ApiDoc;

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// Where a node's HTTP server listens, if anywhere (for `squall up` to print).
pub fn dashboard_url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
