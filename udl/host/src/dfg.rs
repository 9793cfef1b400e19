//! Cascade-compatible data-flow graphs: parsing and checking `dfgs.json`.
//!
//! A node reads one `dfgs.json` at start. The file is Cascade's own format, accepted as
//! is (see `include/cascade/data_flow_graph.hpp` in Derecho-Project/cascade): a JSON
//! array of DFGs `{ "id", "desc", "graph": [vertex, ...] }`, where each vertex names a
//! pool path and a list of UDLs, and every other per-UDL list is index-aligned with
//! `user_defined_logic_list`. A single DFG object (not wrapped in an array) is accepted
//! too, as a convenience for hand-written files.
//!
//! Cascade's loader checks almost nothing (its source says "TODO: validate dfg"): an
//! unknown hook or dispatcher silently becomes the default, an unknown field is
//! ignored, and a short list throws from deep inside the server's start. Here a file is
//! checked whole before anything is registered, and the first fault is returned as a
//! [`DfgError`] that names the DFG, the vertex and the field (and list index) at fault.
//!
//! Where Squall is stricter than Cascade, on purpose:
//! - **Unknown fields are rejected**, at DFG and at vertex level. Cascade ignores them,
//!   so a misspelt list (Cascade's own `notification` example has `"hook"` where it
//!   means `user_defined_logic_hook_list`) silently leaves every UDL on its default;
//!   users expect such typos to be caught, and the error lists the known fields.
//! - **Enumerated values are checked**: `shard_dispatcher_list`,
//!   `user_defined_logic_stateful_list`, `user_defined_logic_hook_list` and destination
//!   actions must hold one of the documented strings.
//! - **Only in-process (`"pthread"`) execution** is supported; Cascade's `"process"` and
//!   `"docker"` modes are prototypes that need its mproc build, and are rejected with
//!   [`DfgError::UnsupportedExecutionEnvironment`].
//! - UUIDs must be canonical 8-4-4-4-12 hex (any case; stored lowercase), DFG ids are
//!   unique within a file, and a pathname appears at most once per DFG.
//!
//! Where Squall extends Cascade: a destination key may name a remote site as
//! `"site:/pool/path/"` ([`Destination::site`]).
//!
//! Boundary: this module only reads and checks the file. It does not know which UDLs
//! are loaded (the plugin registry matches [`VertexUdl::uuid`] against them), nor does
//! it check that a destination pool exists: destinations may be plain pools outside
//! any DFG.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The largest `dfgs.json` accepted. Real files are a few KiB; the limit keeps a
/// mistaken path (a data file, a log) from being parsed into memory at start.
pub const DFG_FILE_SIZE_MAX_BYTES: usize = 1 << 20;
/// The most DFGs one file may hold.
pub const DFGS_PER_FILE_MAX: usize = 256;
/// The most vertices one DFG may hold.
pub const VERTICES_PER_DFG_MAX: usize = 1024;
/// The most UDLs one vertex may hold (each gets its own handler registration).
pub const UDLS_PER_VERTEX_MAX: usize = 64;
/// The most destinations one UDL of a vertex may emit to (each emit fans out to all).
pub const DESTINATIONS_PER_UDL_MAX: usize = 64;
/// The longest vertex pathname or destination pool path, after normalisation.
pub const PATHNAME_SIZE_MAX_BYTES: usize = 1024;
/// The longest remote site name in a destination key `site:/path/`.
pub const SITE_NAME_SIZE_MAX_BYTES: usize = 64;

/// Cascade's JSON field names, in one place so that parsing, errors and
/// [`Dfg::to_json`] agree.
mod field {
    pub const ID: &str = "id";
    pub const DESCRIPTION: &str = "desc";
    pub const GRAPH: &str = "graph";
    pub const PATHNAME: &str = "pathname";
    pub const UDL_LIST: &str = "user_defined_logic_list";
    pub const SHARD_DISPATCHER_LIST: &str = "shard_dispatcher_list";
    pub const EXECUTION_ENVIRONMENT: &str = "execution_environment";
    pub const UDL_STATEFUL_LIST: &str = "user_defined_logic_stateful_list";
    pub const UDL_HOOK_LIST: &str = "user_defined_logic_hook_list";
    pub const UDL_CONFIG_LIST: &str = "user_defined_logic_config_list";
    pub const DESTINATIONS: &str = "destinations";
    pub const SITE: &str = "site";
    pub const MODE: &str = "mode";
    pub const SPEC: &str = "spec";

    /// What an unknown-field error lists as the fields a DFG may have.
    pub const KNOWN_AT_DFG: &str = "id, desc, graph";
    /// What an unknown-field error lists as the fields a vertex may have.
    pub const KNOWN_AT_VERTEX: &str = "pathname, user_defined_logic_list, \
        shard_dispatcher_list, execution_environment, user_defined_logic_stateful_list, \
        user_defined_logic_hook_list, user_defined_logic_config_list, destinations, site";
}

/// The only execution mode Squall runs: a worker thread in the node's process.
const EXECUTION_MODE_PTHREAD: &str = "pthread";

/// Where in the file an error lies: the DFG, and the vertex when there is one.
///
/// Both are labels for people: the DFG's id (or `#<index>` in the file when the id
/// itself is missing or malformed) and the vertex's normalised pathname (or
/// `#<index>` in the graph when the pathname is at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfgLocation {
    pub dfg: String,
    pub vertex: Option<String>,
}

impl fmt::Display for DfgLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "DFG {}", self.dfg)?;
        if let Some(vertex) = &self.vertex {
            write!(formatter, ", vertex {vertex}")?;
        }
        Ok(())
    }
}

/// Why a `dfgs.json` was rejected. A file is accepted whole or not at all; the error
/// is the first fault found, in file order.
#[derive(Debug, thiserror::Error)]
pub enum DfgError {
    #[error("dfgs.json is {size_bytes} bytes, over the limit of {DFG_FILE_SIZE_MAX_BYTES} bytes")]
    FileTooLarge { size_bytes: usize },

    /// Not JSON, or JSON of the wrong shape (the file, a DFG or a vertex is not an
    /// object or array where one is expected, or a field is given twice). The source
    /// carries the line and column.
    #[error("dfgs.json is not a valid DFG list: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },

    #[error("dfgs.json holds {count} DFGs, over the limit of {DFGS_PER_FILE_MAX}")]
    TooManyDfgs { count: usize },

    #[error("{at}: missing required field `{field}`")]
    MissingField {
        at: DfgLocation,
        field: &'static str,
    },

    /// A field is present but its value (or, for a per-UDL list, its entry at `index`)
    /// is not acceptable.
    #[error("{at}: `{field}`{}: {reason}", index_label(.index))]
    InvalidField {
        at: DfgLocation,
        field: &'static str,
        index: Option<usize>,
        reason: String,
    },

    #[error("{at}: unknown field `{field}` (known fields: {known})")]
    UnknownField {
        at: DfgLocation,
        field: String,
        known: &'static str,
    },

    #[error(
        "{at}: `{field}` has {length} entries but `user_defined_logic_list` has {udl_count}; \
         per-UDL lists must be index-aligned"
    )]
    ListLengthMismatch {
        at: DfgLocation,
        field: &'static str,
        length: usize,
        udl_count: usize,
    },

    #[error(
        "{at}: `execution_environment`[{index}]: mode \"{mode}\" is not supported; \
         Squall runs UDLs only in-process (\"pthread\")"
    )]
    UnsupportedExecutionEnvironment {
        at: DfgLocation,
        index: usize,
        mode: String,
    },

    #[error("DFG {dfg_id} (#{index}) has the same id as DFG #{first_index}")]
    DuplicateDfgId {
        dfg_id: String,
        index: usize,
        first_index: usize,
    },

    #[error("{at}: pathname {pathname} is already a vertex of this DFG")]
    DuplicatePathname { at: DfgLocation, pathname: String },

    #[error("{at}: `destinations`[{index}]: destination {destination} is given twice")]
    DuplicateDestination {
        at: DfgLocation,
        index: usize,
        destination: String,
    },

    /// A count over one of this module's named limits; `limit` names the constant.
    #[error("{at}: {count} {what}, over the limit {limit} = {max}")]
    LimitExceeded {
        at: DfgLocation,
        what: &'static str,
        count: usize,
        limit: &'static str,
        max: usize,
    },
}

fn index_label(index: &Option<usize>) -> String {
    match index {
        Some(index) => format!("[{index}]"),
        None => String::new(),
    }
}

/// One data-flow graph: a set of vertices (pool paths) with the UDLs that run on
/// objects put there.
#[derive(Debug, Clone, PartialEq)]
pub struct Dfg {
    /// Canonical lowercase UUID (8-4-4-4-12 hex).
    pub id: String,
    /// Cascade's `desc`; empty when the file has none.
    pub description: String,
    /// In file order; pathnames are unique within the DFG.
    pub vertices: Vec<Vertex>,
}

/// A vertex: the UDLs registered on one pool path prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Vertex {
    /// Absolute, ending in `/` (added when the file omits it, as Cascade does).
    pub pathname: String,
    /// In file order, never empty; the same UDL may appear more than once (with a
    /// different config, say).
    pub udls: Vec<VertexUdl>,
    /// Squall's extension: the site whose cluster runs this vertex (`"site": "edge"`);
    /// clusters of other sites skip it, so one DFG can be added to every site of an
    /// application and each runs its part. `None`: every cluster runs it.
    pub site: Option<String>,
}

/// One UDL registration on a vertex: the entries at one index of the vertex's lists.
#[derive(Debug, Clone, PartialEq)]
pub struct VertexUdl {
    /// Canonical lowercase UUID of the UDL plugin.
    pub uuid: String,
    pub dispatcher: Dispatcher,
    pub hook: Hook,
    pub statefulness: Statefulness,
    /// Handed to the plugin (as a JSON string) when its observer is made; `{}` when the
    /// file has no `user_defined_logic_config_list`. (Cascade's own default is a
    /// `json{}`, which nlohmann makes `null`; an empty object is kinder to plugins that
    /// look keys up.)
    pub config: Value,
    /// Where the UDL's emitted objects go: every emit goes to each of them. Sorted by
    /// key (as Cascade's `std::map` has them); empty for a sink.
    pub destinations: Vec<Destination>,
}

/// Which replicas of a shard run a UDL for an ordered put (trigger puts reach one node
/// and run there whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dispatcher {
    /// The one replica chosen by the key's hash: each object is handled once.
    One,
    /// Every replica of the shard.
    All,
}

/// Which puts fire a UDL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Only `trigger_put` (not stored, not ordered).
    Trigger,
    /// Only ordered (stored) puts.
    Ordered,
    /// Both kinds.
    Both,
}

/// How a UDL's work is spread over worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Statefulness {
    /// Objects with the same key go to the same worker, in order.
    Stateful,
    /// Any worker may take any object.
    Stateless,
    /// One dedicated worker for the UDL (Python UDLs need this: one interpreter thread).
    SingleThreaded,
}

/// One edge out of a vertex's UDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The remote site (`"site:/pool/"` in the file), `None` for this site.
    pub site: Option<String>,
    /// Absolute pool path ending in `/`; the emitted key is appended to it.
    pub pool: String,
    pub action: DestinationAction,
}

/// How an emitted object is sent to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationAction {
    /// An ordered, stored put (Cascade `put_and_forget`).
    Put,
    /// A `trigger_put`: handed to the destination's UDLs, not stored.
    TriggerPut,
}

impl Dispatcher {
    /// The spelling in `dfgs.json`.
    pub fn as_cascade_str(self) -> &'static str {
        match self {
            Dispatcher::One => "one",
            Dispatcher::All => "all",
        }
    }

    fn from_cascade_str(text: &str) -> Option<Self> {
        match text {
            "one" => Some(Dispatcher::One),
            "all" => Some(Dispatcher::All),
            _ => None,
        }
    }
}

impl Hook {
    /// The spelling in `dfgs.json`.
    pub fn as_cascade_str(self) -> &'static str {
        match self {
            Hook::Trigger => "trigger",
            Hook::Ordered => "ordered",
            Hook::Both => "both",
        }
    }

    fn from_cascade_str(text: &str) -> Option<Self> {
        match text {
            "trigger" => Some(Hook::Trigger),
            "ordered" => Some(Hook::Ordered),
            "both" => Some(Hook::Both),
            _ => None,
        }
    }

    /// Whether a delivered ordered put fires the UDL.
    pub fn fires_on_ordered(self) -> bool {
        matches!(self, Hook::Ordered | Hook::Both)
    }

    /// Whether a received trigger put fires the UDL.
    pub fn fires_on_trigger(self) -> bool {
        matches!(self, Hook::Trigger | Hook::Both)
    }
}

impl Statefulness {
    /// The spelling in `dfgs.json`.
    pub fn as_cascade_str(self) -> &'static str {
        match self {
            Statefulness::Stateful => "stateful",
            Statefulness::Stateless => "stateless",
            Statefulness::SingleThreaded => "singlethreaded",
        }
    }

    fn from_cascade_str(text: &str) -> Option<Self> {
        match text {
            "stateful" => Some(Statefulness::Stateful),
            "stateless" => Some(Statefulness::Stateless),
            "singlethreaded" => Some(Statefulness::SingleThreaded),
            _ => None,
        }
    }
}

impl DestinationAction {
    /// The spelling in `dfgs.json`.
    pub fn as_cascade_str(self) -> &'static str {
        match self {
            DestinationAction::Put => "put",
            DestinationAction::TriggerPut => "trigger_put",
        }
    }

    fn from_cascade_str(text: &str) -> Option<Self> {
        match text {
            "put" => Some(DestinationAction::Put),
            "trigger_put" => Some(DestinationAction::TriggerPut),
            _ => None,
        }
    }
}

impl Destination {
    /// The destination as a `destinations` key: `"/pool/"` or `"site:/pool/"`.
    pub fn key(&self) -> String {
        match &self.site {
            Some(site) => format!("{site}:{}", self.pool),
            None => self.pool.clone(),
        }
    }
}

impl Dfg {
    /// The DFG in Cascade's format, with every per-UDL list written out (no defaults
    /// left implicit), so that the output reads the same to Cascade and to Squall and
    /// parses back to an equal [`Dfg`].
    pub fn to_json(&self) -> Value {
        let graph: Vec<Value> = self.vertices.iter().map(vertex_to_json).collect();
        let mut object = Map::new();
        object.insert(field::ID.to_owned(), Value::from(self.id.clone()));
        object.insert(
            field::DESCRIPTION.to_owned(),
            Value::from(self.description.clone()),
        );
        object.insert(field::GRAPH.to_owned(), Value::Array(graph));
        Value::Object(object)
    }
}

/// A whole `dfgs.json`: the array of [`Dfg::to_json`].
pub fn dfgs_to_json(dfgs: &[Dfg]) -> Value {
    Value::Array(dfgs.iter().map(Dfg::to_json).collect())
}

fn vertex_to_json(vertex: &Vertex) -> Value {
    let list = |entry: &dyn Fn(&VertexUdl) -> Value| -> Value {
        Value::Array(vertex.udls.iter().map(entry).collect())
    };
    let mut object = Map::new();
    object.insert(
        field::PATHNAME.to_owned(),
        Value::from(vertex.pathname.clone()),
    );
    object.insert(
        field::UDL_LIST.to_owned(),
        list(&|udl| Value::from(udl.uuid.clone())),
    );
    object.insert(
        field::SHARD_DISPATCHER_LIST.to_owned(),
        list(&|udl| Value::from(udl.dispatcher.as_cascade_str())),
    );
    object.insert(
        field::EXECUTION_ENVIRONMENT.to_owned(),
        list(&|_| {
            let mut environment = Map::new();
            environment.insert(field::MODE.to_owned(), Value::from(EXECUTION_MODE_PTHREAD));
            environment.insert(field::SPEC.to_owned(), Value::Object(Map::new()));
            Value::Object(environment)
        }),
    );
    object.insert(
        field::UDL_STATEFUL_LIST.to_owned(),
        list(&|udl| Value::from(udl.statefulness.as_cascade_str())),
    );
    object.insert(
        field::UDL_HOOK_LIST.to_owned(),
        list(&|udl| Value::from(udl.hook.as_cascade_str())),
    );
    object.insert(
        field::UDL_CONFIG_LIST.to_owned(),
        list(&|udl| udl.config.clone()),
    );
    object.insert(
        field::DESTINATIONS.to_owned(),
        list(&|udl| {
            let edges: Map<String, Value> = udl
                .destinations
                .iter()
                .map(|destination| {
                    (
                        destination.key(),
                        Value::from(destination.action.as_cascade_str()),
                    )
                })
                .collect();
            Value::Object(edges)
        }),
    );
    if let Some(site) = &vertex.site {
        object.insert(field::SITE.to_owned(), Value::from(site.clone()));
    }
    Value::Object(object)
}

/// The canonical form of a UUID written 8-4-4-4-12 in hex digits of either case:
/// lowercase. `None` for anything else (braces, missing hyphens, wrong length).
///
/// The plugin registry uses the same rule, so a DFG and a plugin may spell a UUID in
/// different cases and still match.
pub fn normalize_uuid(text: &str) -> Option<String> {
    const HYPHEN_POSITIONS: [usize; 4] = [8, 13, 18, 23];
    const UUID_TEXT_SIZE_BYTES: usize = 36;
    if text.len() != UUID_TEXT_SIZE_BYTES {
        return None;
    }
    let well_formed = text.bytes().enumerate().all(|(position, byte)| {
        if HYPHEN_POSITIONS.contains(&position) {
            byte == b'-'
        } else {
            byte.is_ascii_hexdigit()
        }
    });
    well_formed.then(|| text.to_ascii_lowercase())
}

/// Parses and checks a `dfgs.json`: an array of DFGs, or a single DFG object.
///
/// The file is accepted whole or rejected with the first fault, so a node never runs
/// with half its graphs registered.
pub fn parse_dfgs(json: &str) -> Result<Vec<Dfg>, DfgError> {
    if json.len() > DFG_FILE_SIZE_MAX_BYTES {
        return Err(DfgError::FileTooLarge {
            size_bytes: json.len(),
        });
    }
    let raw_dfgs = parse_raw_file(json)?;
    if raw_dfgs.len() > DFGS_PER_FILE_MAX {
        return Err(DfgError::TooManyDfgs {
            count: raw_dfgs.len(),
        });
    }
    let mut first_index_by_id: HashMap<String, usize> = HashMap::new();
    let mut dfgs = Vec::with_capacity(raw_dfgs.len());
    for (index, raw_dfg) in raw_dfgs.into_iter().enumerate() {
        let dfg = convert_dfg(index, raw_dfg)?;
        if let Some(&first_index) = first_index_by_id.get(&dfg.id) {
            return Err(DfgError::DuplicateDfgId {
                dfg_id: dfg.id,
                index,
                first_index,
            });
        }
        first_index_by_id.insert(dfg.id.clone(), index);
        dfgs.push(dfg);
    }
    Ok(dfgs)
}

// ---------------------------------------------------------------------------------
// The file as serde reads it. Serde checks the shape (objects and arrays where they
// belong, no field given twice, with line and column on failure) and collects unknown
// fields; every value is kept as JSON so that the conversion below can say which DFG,
// vertex, field and index a bad value is at.
// ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a DFG object { \"id\", \"desc\", \"graph\" }")]
struct RawDfg {
    id: Option<Value>,
    desc: Option<Value>,
    graph: Option<Vec<RawVertex>>,
    #[serde(flatten)]
    unknown_fields: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a vertex object { \"pathname\", \"user_defined_logic_list\", ... }")]
struct RawVertex {
    pathname: Option<Value>,
    user_defined_logic_list: Option<Value>,
    shard_dispatcher_list: Option<Value>,
    execution_environment: Option<Value>,
    user_defined_logic_stateful_list: Option<Value>,
    user_defined_logic_hook_list: Option<Value>,
    user_defined_logic_config_list: Option<Value>,
    destinations: Option<Value>,
    site: Option<Value>,
    #[serde(flatten)]
    unknown_fields: Map<String, Value>,
}

fn parse_raw_file(json: &str) -> Result<Vec<RawDfg>, DfgError> {
    let is_single_dfg = json.trim_start().starts_with('{');
    let parsed = if is_single_dfg {
        serde_json::from_str::<RawDfg>(json).map(|raw_dfg| vec![raw_dfg])
    } else {
        serde_json::from_str::<Vec<RawDfg>>(json)
    };
    parsed.map_err(|source| DfgError::Json { source })
}

fn convert_dfg(index: usize, raw: RawDfg) -> Result<Dfg, DfgError> {
    let mut at = DfgLocation {
        dfg: format!("#{index}"),
        vertex: None,
    };
    let id_text = raw.id.ok_or_else(|| DfgError::MissingField {
        at: at.clone(),
        field: field::ID,
    })?;
    let id = parse_uuid(&at, field::ID, None, &id_text)?;
    at.dfg = id.clone();
    if let Some(unknown_field) = raw.unknown_fields.keys().next() {
        return Err(DfgError::UnknownField {
            at,
            field: unknown_field.clone(),
            known: field::KNOWN_AT_DFG,
        });
    }
    let description = match raw.desc {
        None => String::new(),
        Some(Value::String(description)) => description,
        Some(other) => {
            return Err(invalid(
                &at,
                field::DESCRIPTION,
                None,
                expected_string(&other),
            ));
        }
    };
    let raw_vertices = raw.graph.ok_or_else(|| DfgError::MissingField {
        at: at.clone(),
        field: field::GRAPH,
    })?;
    if raw_vertices.len() > VERTICES_PER_DFG_MAX {
        return Err(DfgError::LimitExceeded {
            at,
            what: "vertices",
            count: raw_vertices.len(),
            limit: "VERTICES_PER_DFG_MAX",
            max: VERTICES_PER_DFG_MAX,
        });
    }
    let mut vertices: Vec<Vertex> = Vec::with_capacity(raw_vertices.len());
    for (vertex_index, raw_vertex) in raw_vertices.into_iter().enumerate() {
        let vertex = convert_vertex(&at, vertex_index, raw_vertex)?;
        if vertices
            .iter()
            .any(|earlier| earlier.pathname == vertex.pathname)
        {
            return Err(DfgError::DuplicatePathname {
                at: DfgLocation {
                    dfg: at.dfg.clone(),
                    vertex: Some(format!("#{vertex_index}")),
                },
                pathname: vertex.pathname,
            });
        }
        vertices.push(vertex);
    }
    Ok(Dfg {
        id,
        description,
        vertices,
    })
}

fn convert_vertex(dfg_at: &DfgLocation, index: usize, raw: RawVertex) -> Result<Vertex, DfgError> {
    let mut at = DfgLocation {
        dfg: dfg_at.dfg.clone(),
        vertex: Some(format!("#{index}")),
    };
    let pathname_value = raw.pathname.ok_or_else(|| DfgError::MissingField {
        at: at.clone(),
        field: field::PATHNAME,
    })?;
    let pathname = match &pathname_value {
        Value::String(text) => normalize_path(text)
            .map_err(|reason| invalid(&at, field::PATHNAME, None, format!("{text:?} {reason}")))?,
        other => return Err(invalid(&at, field::PATHNAME, None, expected_string(other))),
    };
    at.vertex = Some(pathname.clone());
    if let Some(unknown_field) = raw.unknown_fields.keys().next() {
        return Err(DfgError::UnknownField {
            at,
            field: unknown_field.clone(),
            known: field::KNOWN_AT_VERTEX,
        });
    }

    let uuid_values = match raw.user_defined_logic_list {
        None => {
            return Err(DfgError::MissingField {
                at,
                field: field::UDL_LIST,
            });
        }
        Some(Value::Array(values)) => values,
        Some(other) => {
            return Err(invalid(&at, field::UDL_LIST, None, expected_array(&other)));
        }
    };
    if uuid_values.is_empty() {
        return Err(invalid(
            &at,
            field::UDL_LIST,
            None,
            "is empty; a vertex needs a UDL".to_owned(),
        ));
    }
    let udl_count = uuid_values.len();
    if udl_count > UDLS_PER_VERTEX_MAX {
        return Err(DfgError::LimitExceeded {
            at,
            what: "UDLs",
            count: udl_count,
            limit: "UDLS_PER_VERTEX_MAX",
            max: UDLS_PER_VERTEX_MAX,
        });
    }
    let dispatchers = aligned_list(
        &at,
        field::SHARD_DISPATCHER_LIST,
        raw.shard_dispatcher_list,
        udl_count,
    )?;
    let environments = aligned_list(
        &at,
        field::EXECUTION_ENVIRONMENT,
        raw.execution_environment,
        udl_count,
    )?;
    let statefulnesses = aligned_list(
        &at,
        field::UDL_STATEFUL_LIST,
        raw.user_defined_logic_stateful_list,
        udl_count,
    )?;
    let hooks = aligned_list(
        &at,
        field::UDL_HOOK_LIST,
        raw.user_defined_logic_hook_list,
        udl_count,
    )?;
    let configs = aligned_list(
        &at,
        field::UDL_CONFIG_LIST,
        raw.user_defined_logic_config_list,
        udl_count,
    )?;
    let destinations = match raw.destinations {
        None => {
            return Err(DfgError::MissingField {
                at,
                field: field::DESTINATIONS,
            });
        }
        destinations => aligned_list(&at, field::DESTINATIONS, destinations, udl_count)?,
    };

    let mut udls = Vec::with_capacity(udl_count);
    for (udl_index, uuid_value) in uuid_values.iter().enumerate() {
        let entry = |list| entry_at(list, udl_index);
        if let Some(environment) = entry(&environments) {
            check_execution_environment(&at, udl_index, environment)?;
        }
        udls.push(VertexUdl {
            uuid: parse_uuid(&at, field::UDL_LIST, Some(udl_index), uuid_value)?,
            dispatcher: parse_choice(
                &at,
                field::SHARD_DISPATCHER_LIST,
                udl_index,
                entry(&dispatchers),
                Dispatcher::One,
                Dispatcher::from_cascade_str,
                "\"one\" or \"all\"",
            )?,
            hook: parse_choice(
                &at,
                field::UDL_HOOK_LIST,
                udl_index,
                entry(&hooks),
                Hook::Both,
                Hook::from_cascade_str,
                "\"trigger\", \"ordered\" or \"both\"",
            )?,
            statefulness: parse_choice(
                &at,
                field::UDL_STATEFUL_LIST,
                udl_index,
                entry(&statefulnesses),
                Statefulness::Stateful,
                Statefulness::from_cascade_str,
                "\"stateful\", \"stateless\" or \"singlethreaded\"",
            )?,
            config: entry(&configs)
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
            destinations: match entry(&destinations) {
                Some(edges) => parse_destinations(&at, udl_index, edges)?,
                None => Vec::new(),
            },
        });
    }
    let site = match raw.site {
        None => None,
        Some(Value::String(site)) if is_site_name(&site) => Some(site),
        Some(other) => {
            return Err(invalid(
                &at,
                field::SITE,
                None,
                format!(
                    "{other} is not a site name: 1 to {SITE_NAME_SIZE_MAX_BYTES} of [a-z0-9_-]"
                ),
            ));
        }
    };
    Ok(Vertex {
        pathname,
        udls,
        site,
    })
}

/// The grammar of site names (`site:/pool/` destinations, `"site"` of a vertex).
pub fn is_site_name(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= SITE_NAME_SIZE_MAX_BYTES
        && site.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
        })
}

/// The entry at `index` of a per-UDL list checked by [`aligned_list`], `None` when the
/// list is absent.
fn entry_at(list: &Option<Vec<Value>>, index: usize) -> Option<&Value> {
    list.as_ref().and_then(|values| values.get(index))
}

fn invalid(
    at: &DfgLocation,
    field: &'static str,
    index: Option<usize>,
    reason: String,
) -> DfgError {
    DfgError::InvalidField {
        at: at.clone(),
        field,
        index,
        reason,
    }
}

/// A short name of a JSON value's type, for "expected X, found Y" messages.
fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected_string(found: &Value) -> String {
    format!("expected a string, found {}", json_type_name(found))
}

fn expected_array(found: &Value) -> String {
    format!("expected an array, found {}", json_type_name(found))
}

/// A per-UDL list: absent (every entry takes its default), or an array as long as
/// `user_defined_logic_list`.
fn aligned_list(
    at: &DfgLocation,
    field: &'static str,
    value: Option<Value>,
    udl_count: usize,
) -> Result<Option<Vec<Value>>, DfgError> {
    match value {
        None => Ok(None),
        Some(Value::Array(values)) if values.len() == udl_count => Ok(Some(values)),
        Some(Value::Array(values)) => Err(DfgError::ListLengthMismatch {
            at: at.clone(),
            field,
            length: values.len(),
            udl_count,
        }),
        Some(other) => Err(invalid(at, field, None, expected_array(&other))),
    }
}

fn parse_uuid(
    at: &DfgLocation,
    field: &'static str,
    index: Option<usize>,
    value: &Value,
) -> Result<String, DfgError> {
    let Value::String(text) = value else {
        return Err(invalid(at, field, index, expected_string(value)));
    };
    normalize_uuid(text).ok_or_else(|| {
        invalid(
            at,
            field,
            index,
            format!("{text:?} is not a UUID (8-4-4-4-12 hex digits)"),
        )
    })
}

/// One entry of an enumerated per-UDL list, or `default` when the list is absent.
fn parse_choice<T>(
    at: &DfgLocation,
    field: &'static str,
    index: usize,
    value: Option<&Value>,
    default: T,
    from_cascade_str: fn(&str) -> Option<T>,
    expected: &'static str,
) -> Result<T, DfgError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let Value::String(text) = value else {
        return Err(invalid(
            at,
            field,
            Some(index),
            format!("expected {expected}, found {}", json_type_name(value)),
        ));
    };
    from_cascade_str(text).ok_or_else(|| {
        invalid(
            at,
            field,
            Some(index),
            format!("expected {expected}, found {text:?}"),
        )
    })
}

/// An `execution_environment` entry: an object whose `mode` is `"pthread"`. Its other
/// keys (`spec`, or free keys such as Cascade's `shared_space_size`) configure
/// out-of-process modes only, and are accepted and ignored, as Cascade does for
/// pthread UDLs.
fn check_execution_environment(
    at: &DfgLocation,
    index: usize,
    value: &Value,
) -> Result<(), DfgError> {
    let Value::Object(environment) = value else {
        return Err(invalid(
            at,
            field::EXECUTION_ENVIRONMENT,
            Some(index),
            format!(
                "expected an object {{\"mode\": ...}}, found {}",
                json_type_name(value)
            ),
        ));
    };
    match environment.get(field::MODE) {
        Some(Value::String(mode)) if mode == EXECUTION_MODE_PTHREAD => Ok(()),
        Some(Value::String(mode)) => Err(DfgError::UnsupportedExecutionEnvironment {
            at: at.clone(),
            index,
            mode: mode.clone(),
        }),
        Some(other) => Err(invalid(
            at,
            field::EXECUTION_ENVIRONMENT,
            Some(index),
            format!("`mode` {}", expected_string(other)),
        )),
        None => Err(invalid(
            at,
            field::EXECUTION_ENVIRONMENT,
            Some(index),
            "missing `mode` (\"pthread\")".to_owned(),
        )),
    }
}

/// A `destinations` entry: `{ "/pool/" | "site:/pool/": "put" | "trigger_put" }`.
fn parse_destinations(
    at: &DfgLocation,
    index: usize,
    value: &Value,
) -> Result<Vec<Destination>, DfgError> {
    let Value::Object(edges) = value else {
        return Err(invalid(
            at,
            field::DESTINATIONS,
            Some(index),
            format!(
                "expected an object {{\"/pool/\": \"put\"}}, found {}",
                json_type_name(value)
            ),
        ));
    };
    if edges.len() > DESTINATIONS_PER_UDL_MAX {
        return Err(DfgError::LimitExceeded {
            at: at.clone(),
            what: "destinations",
            count: edges.len(),
            limit: "DESTINATIONS_PER_UDL_MAX",
            max: DESTINATIONS_PER_UDL_MAX,
        });
    }
    let mut destinations: Vec<Destination> = Vec::with_capacity(edges.len());
    for (key, action_value) in edges {
        let (site, pool) = parse_destination_key(key).map_err(|reason| {
            invalid(
                at,
                field::DESTINATIONS,
                Some(index),
                format!("key {key:?} {reason}"),
            )
        })?;
        let action = match action_value {
            Value::String(text) => DestinationAction::from_cascade_str(text),
            _ => None,
        }
        .ok_or_else(|| {
            invalid(
                at,
                field::DESTINATIONS,
                Some(index),
                format!(
                    "action for {key:?}: expected \"put\" or \"trigger_put\", found {action_value}"
                ),
            )
        })?;
        let destination = Destination { site, pool, action };
        if destinations
            .iter()
            .any(|earlier| earlier.site == destination.site && earlier.pool == destination.pool)
        {
            return Err(DfgError::DuplicateDestination {
                at: at.clone(),
                index,
                destination: destination.key(),
            });
        }
        destinations.push(destination);
    }
    // serde_json's map is in key order unless some crate in the build turns on its
    // `preserve_order` feature; sort so the order (and `to_json`) cannot depend on that.
    destinations.sort_by_key(Destination::key);
    Ok(destinations)
}

/// Splits `"site:/pool"` or `"/pool"` into the site and the normalised pool path.
fn parse_destination_key(key: &str) -> Result<(Option<String>, String), String> {
    if key.starts_with('/') {
        return Ok((None, normalize_path(key)?));
    }
    let Some((site, path)) = key.split_once(':') else {
        return Err("must be an absolute pool path \"/pool/\" or \"site:/pool/\"".to_owned());
    };
    if !is_site_name(site) {
        return Err(format!(
            "has site name {site:?}; a site name is 1 to {SITE_NAME_SIZE_MAX_BYTES} of [a-z0-9_-]"
        ));
    }
    Ok((Some(site.to_owned()), normalize_path(path)?))
}

/// An absolute pool path with a trailing `/` (added when missing, as Cascade does).
/// Rejects empty components (`//`), which are always typos, and control characters.
fn normalize_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err("is not an absolute path (it must start with '/')".to_owned());
    }
    if text.contains("//") {
        return Err("has an empty path component (\"//\")".to_owned());
    }
    if text.chars().any(char::is_control) {
        return Err("contains a control character".to_owned());
    }
    let mut pathname = text.to_owned();
    if !pathname.ends_with('/') {
        pathname.push('/');
    }
    if pathname.len() > PATHNAME_SIZE_MAX_BYTES {
        return Err(format!(
            "is {} bytes, over the limit PATHNAME_SIZE_MAX_BYTES = {PATHNAME_SIZE_MAX_BYTES}",
            pathname.len()
        ));
    }
    Ok(pathname)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTAKE_UDL: &str = "3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6f";
    const GRADER_UDL: &str = "7c81e4b2-0d3a-4f5c-8b9e-2c3d4e5f6a7b";
    const AUDIT_UDL: &str = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d";
    const ARCHIVE_UDL: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";

    /// Modelled on Cascade's dairy_farm example: a front end triggers a compute stage
    /// that stores into an archive vertex; plus one vertex using every list, a remote
    /// destination, and a second DFG using Cascade's execution_environment spellings.
    const ORCHARD_DFGS: &str = r#"[
        {
            "id": "1D5F2E3A-7B8C-4D9E-8F0A-1B2C3D4E5F60",
            "desc": "Orchard grading demo",
            "graph": [
                {
                    "pathname": "/orchard/intake",
                    "user_defined_logic_list": [ "3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6f" ],
                    "destinations": [ {"/orchard/grade" : "trigger_put"} ]
                },
                {
                    "pathname": "/orchard/grade/",
                    "shard_dispatcher_list": ["one", "all"],
                    "execution_environment": [ {"mode": "pthread", "spec": {}}, {"mode": "pthread"} ],
                    "user_defined_logic_list": [
                        "7c81e4b2-0d3a-4f5c-8b9e-2c3d4e5f6a7b",
                        "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"
                    ],
                    "user_defined_logic_stateful_list": ["stateless", "singlethreaded"],
                    "user_defined_logic_hook_list": ["trigger", "ordered"],
                    "user_defined_logic_config_list": [
                        {"model": "grader-v2", "threshold": 0.8},
                        "audit log level 2"
                    ],
                    "destinations": [
                        {"/orchard/archive": "put", "west:/orchard/replica": "trigger_put"},
                        {}
                    ]
                },
                {
                    "pathname": "/orchard/archive",
                    "user_defined_logic_list": [ "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9" ],
                    "destinations": [ {} ]
                }
            ]
        },
        {
            "id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
            "desc": "Same UDL twice, differently configured",
            "graph": [
                {
                    "pathname": "/orchard/intake",
                    "user_defined_logic_list": [
                        "3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6f",
                        "3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6f"
                    ],
                    "user_defined_logic_config_list": [ {"stage": 0}, {"stage": 1} ],
                    "destinations": [ {"/orchard/stage1": "put"}, {"/orchard/stage2": "put"} ]
                }
            ]
        }
    ]"#;

    /// A one-vertex DFG with `vertex_fields` spliced into the vertex object, for the
    /// rejection tests.
    fn dfg_with_vertex(vertex_fields: &str) -> String {
        format!(
            r#"[{{ "id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "desc": "t",
                  "graph": [ {{ {vertex_fields} }} ] }}]"#
        )
    }

    fn minimal_vertex_with(extra_fields: &str) -> String {
        dfg_with_vertex(&format!(
            r#""pathname": "/p", "user_defined_logic_list": ["{INTAKE_UDL}", "{GRADER_UDL}"],
               "destinations": [{{}}, {{}}] {extra_fields}"#
        ))
    }

    fn parse_error(json: &str) -> DfgError {
        match parse_dfgs(json) {
            Ok(dfgs) => panic!("expected a rejection, parsed {dfgs:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn parses_a_multi_vertex_file() {
        let dfgs = parse_dfgs(ORCHARD_DFGS).expect("the orchard file is valid");
        assert_eq!(dfgs.len(), 2);
        let orchard = &dfgs[0];
        assert_eq!(
            orchard.id, "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60",
            "ids are stored lowercase"
        );
        assert_eq!(orchard.description, "Orchard grading demo");
        let pathnames: Vec<&str> = orchard
            .vertices
            .iter()
            .map(|vertex| vertex.pathname.as_str())
            .collect();
        assert_eq!(
            pathnames,
            ["/orchard/intake/", "/orchard/grade/", "/orchard/archive/"]
        );

        let intake = &orchard.vertices[0].udls[0];
        assert_eq!(intake.uuid, INTAKE_UDL);
        assert_eq!(
            intake.destinations,
            [Destination {
                site: None,
                pool: "/orchard/grade/".to_owned(),
                action: DestinationAction::TriggerPut
            }]
        );

        let grade = &orchard.vertices[1];
        assert_eq!(grade.udls.len(), 2);
        let grader = &grade.udls[0];
        assert_eq!(grader.uuid, GRADER_UDL);
        assert_eq!(grader.dispatcher, Dispatcher::One);
        assert_eq!(grader.statefulness, Statefulness::Stateless);
        assert_eq!(grader.hook, Hook::Trigger);
        assert_eq!(
            grader.config,
            serde_json::json!({"model": "grader-v2", "threshold": 0.8})
        );
        assert_eq!(
            grader.destinations,
            [
                Destination {
                    site: None,
                    pool: "/orchard/archive/".to_owned(),
                    action: DestinationAction::Put
                },
                Destination {
                    site: Some("west".to_owned()),
                    pool: "/orchard/replica/".to_owned(),
                    action: DestinationAction::TriggerPut,
                },
            ]
        );
        let audit = &grade.udls[1];
        assert_eq!(audit.uuid, AUDIT_UDL);
        assert_eq!(audit.dispatcher, Dispatcher::All);
        assert_eq!(audit.statefulness, Statefulness::SingleThreaded);
        assert_eq!(audit.hook, Hook::Ordered);
        assert_eq!(audit.config, Value::from("audit log level 2"));
        assert!(
            audit.destinations.is_empty(),
            "an empty destination map is a sink"
        );

        assert_eq!(orchard.vertices[2].udls[0].uuid, ARCHIVE_UDL);

        let twice = &dfgs[1].vertices[0].udls;
        assert_eq!(twice[0].uuid, twice[1].uuid, "a UDL may repeat on a vertex");
        assert_eq!(twice[1].config, serde_json::json!({"stage": 1}));
    }

    #[test]
    fn absent_lists_take_cascades_defaults() {
        let json = dfg_with_vertex(&format!(
            r#""pathname": "/sink", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]"#
        ));
        let dfgs = parse_dfgs(&json).expect("a minimal vertex is valid");
        let udl = &dfgs[0].vertices[0].udls[0];
        assert_eq!(udl.dispatcher, Dispatcher::One);
        assert_eq!(udl.hook, Hook::Both);
        assert_eq!(udl.statefulness, Statefulness::Stateful);
        assert_eq!(udl.config, serde_json::json!({}));
        assert!(udl.destinations.is_empty());
    }

    #[test]
    fn description_is_optional() {
        let json = format!(
            r#"{{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "graph": [
                {{"pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]}}]}}"#
        );
        let dfgs = parse_dfgs(&json).expect("desc may be left out");
        assert_eq!(dfgs[0].description, "");
    }

    #[test]
    fn accepts_a_single_dfg_object_and_an_empty_list() {
        let single = format!(
            r#"  {{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "desc": "one", "graph": [
                {{"pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]}}]}}"#
        );
        let dfgs = parse_dfgs(&single).expect("a bare DFG object is accepted");
        assert_eq!(dfgs.len(), 1);
        assert_eq!(dfgs[0].vertices[0].pathname, "/a/");
        assert!(parse_dfgs("[]").expect("an empty list is valid").is_empty());
    }

    #[test]
    fn accepts_cascades_execution_environment_shapes() {
        // Cascade's unit-test file gives free keys beside `mode`; its printer example
        // gives `spec`. Both are fine for pthread UDLs.
        let json = minimal_vertex_with(
            r#", "execution_environment": [ {"mode": "pthread", "shared_space_size": "2M"},
                                            {"mode": "pthread", "spec": {"cpu": 3}} ]"#,
        );
        let dfgs = parse_dfgs(&json).expect("pthread environments with extra keys are valid");
        assert_eq!(dfgs[0].vertices[0].udls.len(), 2);
    }

    #[test]
    fn round_trips_through_to_json() {
        let dfgs = parse_dfgs(ORCHARD_DFGS).expect("the orchard file is valid");
        let text =
            serde_json::to_string_pretty(&dfgs_to_json(&dfgs)).expect("a Value always serialises");
        let reparsed = parse_dfgs(&text).expect("to_json output is valid");
        assert_eq!(reparsed, dfgs);
        // Canonical: a second trip gives the same JSON.
        assert_eq!(dfgs_to_json(&reparsed), dfgs_to_json(&dfgs));
        let vertex = &dfgs_to_json(&dfgs)[0]["graph"][1];
        assert_eq!(
            vertex["user_defined_logic_hook_list"],
            serde_json::json!(["trigger", "ordered"])
        );
        assert_eq!(vertex["execution_environment"][0]["mode"], "pthread");
        assert_eq!(
            vertex["destinations"][0]["west:/orchard/replica/"],
            "trigger_put"
        );
    }

    #[test]
    fn hook_says_which_puts_fire() {
        assert!(Hook::Both.fires_on_ordered() && Hook::Both.fires_on_trigger());
        assert!(Hook::Ordered.fires_on_ordered() && !Hook::Ordered.fires_on_trigger());
        assert!(!Hook::Trigger.fires_on_ordered() && Hook::Trigger.fires_on_trigger());
    }

    #[test]
    fn normalizes_uuids_of_either_case() {
        assert_eq!(
            normalize_uuid("3F2A9C10-5B7E-4D21-9E0F-1A2B3C4D5E6F").as_deref(),
            Some("3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6f")
        );
        for bad in [
            "",
            "3f2a9c105b7e4d219e0f1a2b3c4d5e6f",
            "{3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6f}",
            "3f2a9c10-5b7e-4d21-9e0f-1a2b3c4d5e6g",
            "3f2a9c10-5b7e4-d21-9e0f-1a2b3c4d5e6f",
        ] {
            assert_eq!(normalize_uuid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_json() {
        let error = parse_error(r#"[{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "graph": [}]"#);
        assert!(matches!(error, DfgError::Json { .. }), "{error}");
        let error = parse_error(r#""just a string""#);
        assert!(matches!(error, DfgError::Json { .. }), "{error}");
        let error = parse_error(r#"[ 42 ]"#);
        assert!(matches!(error, DfgError::Json { .. }), "{error}");
        assert!(error.to_string().contains("a DFG object"), "{error}");
    }

    #[test]
    fn rejects_a_field_given_twice() {
        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "pathname": "/b", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]"#
        ));
        let error = parse_error(&json);
        assert!(matches!(error, DfgError::Json { .. }), "{error}");
        assert!(
            error.to_string().contains("duplicate field `pathname`"),
            "{error}"
        );
    }

    #[test]
    fn rejects_a_missing_pathname() {
        let json = dfg_with_vertex(&format!(
            r#""user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]"#
        ));
        let error = parse_error(&json);
        let DfgError::MissingField { at, field } = &error else {
            panic!("wrong error: {error}")
        };
        assert_eq!(*field, "pathname");
        assert_eq!(at.dfg, "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60");
        assert_eq!(at.vertex.as_deref(), Some("#0"));
    }

    #[test]
    fn rejects_missing_required_lists() {
        let json = dfg_with_vertex(r#""pathname": "/a", "destinations": [{}]"#);
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::MissingField {
                    field: "user_defined_logic_list",
                    ..
                }
            ),
            "{error}"
        );

        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"]"#
        ));
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::MissingField {
                    field: "destinations",
                    ..
                }
            ),
            "{error}"
        );

        let json = dfg_with_vertex(
            r#""pathname": "/a", "user_defined_logic_list": [], "destinations": []"#,
        );
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::InvalidField {
                    field: "user_defined_logic_list",
                    index: None,
                    ..
                }
            ),
            "{error}"
        );

        let error =
            parse_error(r#"[{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "desc": "no graph"}]"#);
        assert!(
            matches!(error, DfgError::MissingField { field: "graph", .. }),
            "{error}"
        );
    }

    #[test]
    fn rejects_bad_uuids() {
        let error = parse_error(r#"[{"id": "not-a-uuid", "desc": "", "graph": []}]"#);
        let DfgError::InvalidField {
            at, field, index, ..
        } = &error
        else {
            panic!("wrong error: {error}")
        };
        assert_eq!((at.dfg.as_str(), *field, *index), ("#0", "id", None));

        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}", "3f2a9c10-5b7e-4d21-9e0f"],
               "destinations": [{{}}, {{}}]"#
        ));
        let error = parse_error(&json);
        let DfgError::InvalidField {
            at, field, index, ..
        } = &error
        else {
            panic!("wrong error: {error}")
        };
        assert_eq!(
            (at.vertex.as_deref(), *field, *index),
            (Some("/a/"), "user_defined_logic_list", Some(1))
        );
        let message = error.to_string();
        assert!(
            message.starts_with("DFG 1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60, vertex /a/: `user_defined_logic_list`[1]:"),
            "{message}"
        );
    }

    #[test]
    fn rejects_mismatched_list_lengths() {
        let json = minimal_vertex_with(r#", "user_defined_logic_hook_list": ["trigger"]"#);
        let error = parse_error(&json);
        let DfgError::ListLengthMismatch {
            field,
            length,
            udl_count,
            ..
        } = &error
        else {
            panic!("wrong error: {error}")
        };
        assert_eq!(
            (*field, *length, *udl_count),
            ("user_defined_logic_hook_list", 1, 2)
        );

        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}, {{}}]"#
        ));
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::ListLengthMismatch {
                    field: "destinations",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn rejects_bad_enumerated_values() {
        let cases = [
            (
                r#", "shard_dispatcher_list": ["one", "any"]"#,
                "shard_dispatcher_list",
            ),
            (
                r#", "user_defined_logic_hook_list": ["both", "trigger_put"]"#,
                "user_defined_logic_hook_list",
            ),
            (
                r#", "user_defined_logic_stateful_list": ["stateful", "single_threaded"]"#,
                "user_defined_logic_stateful_list",
            ),
            (
                r#", "user_defined_logic_stateful_list": ["stateful", 3]"#,
                "user_defined_logic_stateful_list",
            ),
        ];
        for (extra_fields, expected_field) in cases {
            let error = parse_error(&minimal_vertex_with(extra_fields));
            let DfgError::InvalidField { field, index, .. } = &error else {
                panic!("wrong error: {error}")
            };
            assert_eq!((*field, *index), (expected_field, Some(1)), "{error}");
        }
    }

    #[test]
    fn rejects_unsupported_execution_modes() {
        for mode in ["process", "docker"] {
            let json = minimal_vertex_with(&format!(
                r#", "execution_environment": [{{"mode": "pthread"}}, {{"mode": "{mode}", "spec": {{}}}}]"#
            ));
            let error = parse_error(&json);
            let DfgError::UnsupportedExecutionEnvironment {
                index, mode: found, ..
            } = &error
            else {
                panic!("wrong error: {error}")
            };
            assert_eq!((*index, found.as_str()), (1, mode));
        }
        let json = minimal_vertex_with(
            r#", "execution_environment": [{"spec": {}}, {"mode": "pthread"}]"#,
        );
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::InvalidField {
                    field: "execution_environment",
                    index: Some(0),
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn rejects_a_duplicate_dfg_id() {
        let vertex = format!(
            r#"{{"pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]}}"#
        );
        let json = format!(
            r#"[{{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "desc": "a", "graph": [{vertex}]}},
                {{"id": "1D5F2E3A-7B8C-4D9E-8F0A-1B2C3D4E5F60", "desc": "b", "graph": [{vertex}]}}]"#
        );
        let error = parse_error(&json);
        let DfgError::DuplicateDfgId {
            index, first_index, ..
        } = &error
        else {
            panic!("wrong error: {error}")
        };
        assert_eq!((*index, *first_index), (1, 0));
    }

    #[test]
    fn rejects_a_duplicate_pathname() {
        let vertex = |pathname: &str| {
            format!(
                r#"{{"pathname": "{pathname}", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]}}"#
            )
        };
        let json = format!(
            r#"[{{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "desc": "", "graph": [{}, {}]}}]"#,
            vertex("/a/b"),
            vertex("/a/b/")
        );
        let error = parse_error(&json);
        let DfgError::DuplicatePathname { pathname, at } = &error else {
            panic!("wrong error: {error}")
        };
        assert_eq!(
            (pathname.as_str(), at.vertex.as_deref()),
            ("/a/b/", Some("#1"))
        );
    }

    #[test]
    fn rejects_bad_pathnames() {
        for pathname in ["a/b", "", "/a//b", "/a\tb"] {
            let json = dfg_with_vertex(&format!(
                r#""pathname": {pathname:?}, "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]"#
            ));
            let error = parse_error(&json);
            assert!(
                matches!(
                    error,
                    DfgError::InvalidField {
                        field: "pathname",
                        ..
                    }
                ),
                "{pathname:?}: {error}"
            );
        }
        let json = dfg_with_vertex(&format!(
            r#""pathname": 7, "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]"#
        ));
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::InvalidField {
                    field: "pathname",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn rejects_bad_destinations() {
        let cases = [
            r#"{"/b": "get"}"#,
            r#"{"/b": true}"#,
            r#"{"b/": "put"}"#,
            r#"{"West:/b": "put"}"#,
            r#"{":/b": "put"}"#,
            r#"{"west:b": "put"}"#,
            r#"["/b"]"#,
        ];
        for destination in cases {
            let json = dfg_with_vertex(&format!(
                r#""pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{destination}]"#
            ));
            let error = parse_error(&json);
            assert!(
                matches!(
                    error,
                    DfgError::InvalidField {
                        field: "destinations",
                        index: Some(0),
                        ..
                    }
                ),
                "{destination}: {error}"
            );
        }
        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"],
               "destinations": [{{"/b": "put", "/b/": "trigger_put"}}]"#
        ));
        let error = parse_error(&json);
        assert!(
            matches!(error, DfgError::DuplicateDestination { index: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        // Cascade's own notification example misspells the hook list as "hook"; Cascade
        // ignores it, leaving the UDL on "both".
        let json = minimal_vertex_with(r#", "hook": ["trigger_put", "trigger_put"]"#);
        let error = parse_error(&json);
        let DfgError::UnknownField { at, field, .. } = &error else {
            panic!("wrong error: {error}")
        };
        assert_eq!(
            (at.vertex.as_deref(), field.as_str()),
            (Some("/p/"), "hook")
        );
        assert!(
            error.to_string().contains("user_defined_logic_hook_list"),
            "{error}"
        );

        let error = parse_error(
            r#"[{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "description": "x", "graph": []}]"#,
        );
        let DfgError::UnknownField { at, field, .. } = &error else {
            panic!("wrong error: {error}")
        };
        assert_eq!(
            (at.vertex.as_deref(), field.as_str()),
            (None, "description")
        );
    }

    #[test]
    fn rejects_a_file_over_the_size_limit() {
        let padding = " ".repeat(DFG_FILE_SIZE_MAX_BYTES);
        let error = parse_error(&format!("[]{padding}"));
        assert!(matches!(error, DfgError::FileTooLarge { .. }), "{error}");
    }

    #[test]
    fn rejects_counts_over_the_limits() {
        let uuids = vec![format!("{INTAKE_UDL:?}"); UDLS_PER_VERTEX_MAX + 1].join(",");
        let sinks = vec!["{}"; UDLS_PER_VERTEX_MAX + 1].join(",");
        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "user_defined_logic_list": [{uuids}], "destinations": [{sinks}]"#
        ));
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::LimitExceeded {
                    limit: "UDLS_PER_VERTEX_MAX",
                    ..
                }
            ),
            "{error}"
        );

        let vertices: Vec<String> = (0..=VERTICES_PER_DFG_MAX)
            .map(|index| {
                format!(r#"{{"pathname": "/v{index}", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{}}]}}"#)
            })
            .collect();
        let json = format!(
            r#"[{{"id": "1d5f2e3a-7b8c-4d9e-8f0a-1b2c3d4e5f60", "desc": "", "graph": [{}]}}]"#,
            vertices.join(",")
        );
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::LimitExceeded {
                    limit: "VERTICES_PER_DFG_MAX",
                    ..
                }
            ),
            "{error}"
        );

        let edges: Vec<String> = (0..=DESTINATIONS_PER_UDL_MAX)
            .map(|index| format!(r#""/d{index}": "put""#))
            .collect();
        let json = dfg_with_vertex(&format!(
            r#""pathname": "/a", "user_defined_logic_list": ["{INTAKE_UDL}"], "destinations": [{{{}}}]"#,
            edges.join(",")
        ));
        let error = parse_error(&json);
        assert!(
            matches!(
                error,
                DfgError::LimitExceeded {
                    limit: "DESTINATIONS_PER_UDL_MAX",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_vertex_may_be_pinned_to_a_site() {
        let json = format!(
            r#"[{{"id": "7e1d0c4e-0000-4000-8000-00000000a99e", "graph": [
                {{"pathname": "/in", "site": "edge", "user_defined_logic_list": ["{INTAKE_UDL}"],
                  "destinations": [{{"cloud:/ingest/": "put"}}]}},
                {{"pathname": "/ingest", "user_defined_logic_list": ["{INTAKE_UDL}"],
                  "destinations": [{{}}]}}]}}]"#
        );
        let dfgs = parse_dfgs(&json).expect("valid");
        assert_eq!(dfgs[0].vertices[0].site.as_deref(), Some("edge"));
        assert_eq!(dfgs[0].vertices[1].site, None);
        // The canonical form keeps it, and reads back the same.
        let back = parse_dfgs(&dfgs_to_json(&dfgs).to_string()).expect("reads back");
        assert_eq!(back, dfgs);
        for bad in ["\"Edge\"", "\"\"", "3", "\"a:b\""] {
            let json = format!(
                r#"[{{"id": "7e1d0c4e-0000-4000-8000-00000000a99e", "graph": [
                    {{"pathname": "/in", "site": {bad}, "user_defined_logic_list": ["{INTAKE_UDL}"],
                      "destinations": [{{}}]}}]}}]"#
            );
            let err = parse_dfgs(&json).expect_err("an invalid site");
            assert!(err.to_string().contains("site"), "{bad}: {err}");
        }
    }
}
