//! History events as line-based text, so that real OS processes (not the simulator) can
//! record what they saw and a test can merge their files and run the same [checkers]
//! over them.
//!
//! One event per line: the event kind's name, then `key=value` fields separated by single
//! spaces, in the order the fields are declared in [`Event`]. Values:
//! - integers (and `Version`, `SendTicket`, payload ids) as decimal `u64`;
//! - `MemberId` as `n<node>.<incarnation>` (its `Display`);
//! - lists as comma-separated items, `-` for an empty list; `Option` as `-` for `None`;
//! - `DeliveryKind`, `StopReason` and `bool` by name;
//! - `StateDigest` as `applied:chain`;
//! - a view as the lowercase hex of its binary [`codec`] encoding (`Wire::Welcome`), which
//!   already round-trips every field exactly.
//!
//! ```text
//! Sent at_us=1200 member=n1.0 subgroup=0 ticket=3 payload=17 len=64 probe=false
//! Delivered at_us=1900 member=n2.0 view_id=1 subgroup=0 shard=0 sender=n1.0 sender_index=4 version=4294967300 kind=Stable payload=17 ticket=-
//! ReadRequested at_us=1950 member=n1.0 ticket=0 view_id=1 subgroup=0 shard=0
//! ReadBarrier at_us=2000 member=n1.0 ticket=0 view_id=1 subgroup=0 shard=0 barrier=-
//! Trimmed at_us=2500 member=n2.0 view_id=1 subgroup=0 shard=0 received=5,4,0
//! Stopped at_us=3000 member=n3.1 reason=Evicted
//! ```
//!
//! [checkers]: crate::sim::checkers

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::codec::{self, DecodeLimits};
use crate::core::{DeliveryKind, StopReason};
use crate::ids::{MemberId, SendTicket, Version};
use crate::view::View;
use crate::wire::Wire;

use super::history::{Event, History, StateDigest};

/// A line of a history file that could not be read, with its 1-based line number.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("history line {line}: {reason}")]
pub struct HistoryIoError {
    pub line: usize,
    #[source]
    pub reason: HistoryIoReason,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HistoryIoReason {
    #[error("unknown event kind `{0}`")]
    UnknownKind(String),
    /// The line ends before this field: a truncated (or older-format) line.
    #[error("line ends before field `{0}`")]
    MissingField(&'static str),
    /// Wrong key, or a value that does not parse (a view that does not decode included).
    #[error("bad field `{key}`: {why}")]
    BadField { key: &'static str, why: String },
    #[error("unexpected text after the last field: `{0}`")]
    Trailing(String),
    #[error("line is not UTF-8")]
    NotUtf8,
    /// The reader failed (the `io::Error`'s text, so that the error stays comparable).
    #[error("read failed: {0}")]
    Io(String),
}

/// Writes `event` as one line, in a single `write_all` so that a writer killed mid-line
/// leaves at most one partial line at the end of the file (which [`read_events`] skips).
pub fn write_event(out: &mut impl Write, event: &Event) -> io::Result<()> {
    let mut line = format_event(event);
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// Parses every line of `input`.
///
/// A final line without a trailing `'\n'` is skipped, not reported: it is what a process
/// killed (SIGKILL) in the middle of [`write_event`] leaves behind, and the event it was
/// writing never completed. Any other malformed line is an error naming its line number.
pub fn read_events(mut input: impl BufRead) -> Result<Vec<Event>, HistoryIoError> {
    let mut events = Vec::new();
    let mut buf = Vec::new();
    for line in 1.. {
        let fail = |reason| HistoryIoError { line, reason };
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(HistoryIoReason::Io(e.to_string())))?;
        if n == 0 || buf.pop() != Some(b'\n') {
            break;
        }
        let text = std::str::from_utf8(&buf).map_err(|_| fail(HistoryIoReason::NotUtf8))?;
        events.push(parse_line(text).map_err(fail)?);
    }
    Ok(events)
}

/// Merges per-process event lists into one history ordered by `at_us`. Process clocks may
/// step back, so this is a k-way merge on each file's head rather than a sort: every
/// file's own order is kept, and ties go to the earlier file.
pub fn merge(files: Vec<Vec<Event>>) -> History {
    let mut history = History::new(0);
    let mut files: Vec<_> = files
        .into_iter()
        .map(|f| f.into_iter().peekable())
        .collect();
    let mut heads = BinaryHeap::new();
    for (i, file) in files.iter_mut().enumerate() {
        if let Some(event) = file.peek() {
            heads.push(Reverse((event.at_us(), i)));
        }
    }
    while let Some(Reverse((_, i))) = heads.pop() {
        let Some(event) = files[i].next() else {
            continue;
        };
        history.push(event);
        if let Some(next) = files[i].peek() {
            heads.push(Reverse((next.at_us(), i)));
        }
    }
    history
}

/// One field value's text form. Values never contain ' ', ',' or '\n', and never are
/// `-` except for an empty list or `None`, so lists and options stay unambiguous.
trait Field: Sized {
    fn put(&self, out: &mut String);
    fn take(text: &str) -> Result<Self, String>;
}

macro_rules! number_fields {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn put(&self, out: &mut String) {
                // Writing into a String cannot fail.
                let _ = write!(out, "{self}");
            }
            fn take(text: &str) -> Result<Self, String> {
                text.parse().map_err(|_| format!("`{text}` is not a {}", stringify!($t)))
            }
        }
    )*};
}
number_fields!(u64, u32, usize, bool);

/// Newtypes over a `u64`, written as their raw number.
macro_rules! raw_fields {
    ($($t:ident),*) => {$(
        impl Field for $t {
            fn put(&self, out: &mut String) {
                self.0.put(out);
            }
            fn take(text: &str) -> Result<Self, String> {
                u64::take(text).map($t)
            }
        }
    )*};
}
raw_fields!(Version, SendTicket);

/// Fieldless enums, written by variant name.
macro_rules! name_fields {
    ($($t:ident { $($v:ident),* })*) => {$(
        impl Field for $t {
            fn put(&self, out: &mut String) {
                out.push_str(match self { $($t::$v => stringify!($v)),* });
            }
            fn take(text: &str) -> Result<Self, String> {
                match text {
                    $(stringify!($v) => Ok($t::$v),)*
                    _ => Err(format!("`{text}` is not a {}", stringify!($t))),
                }
            }
        }
    )*};
}
name_fields! {
    DeliveryKind { Stable, Trim, Raw }
    StopReason { Evicted, MinorityPartition, Left, FellBehind, StorageFailed }
}

impl Field for MemberId {
    fn put(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
    fn take(text: &str) -> Result<Self, String> {
        let (node, incarnation) = text
            .strip_prefix('n')
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(|| format!("`{text}` is not `n<node>.<incarnation>`"))?;
        Ok(MemberId::new(u32::take(node)?, u32::take(incarnation)?))
    }
}

impl Field for StateDigest {
    fn put(&self, out: &mut String) {
        let _ = write!(out, "{}:{}", self.applied, self.chain);
    }
    fn take(text: &str) -> Result<Self, String> {
        let (applied, chain) = text.split_once(':').ok_or("not `applied:chain`")?;
        Ok(StateDigest {
            applied: u64::take(applied)?,
            chain: u64::take(chain)?,
        })
    }
}

impl<T: Field> Field for Option<T> {
    fn put(&self, out: &mut String) {
        match self {
            Some(value) => value.put(out),
            None => out.push('-'),
        }
    }
    fn take(text: &str) -> Result<Self, String> {
        match text {
            "-" => Ok(None),
            _ => T::take(text).map(Some),
        }
    }
}

impl<T: Field> Field for Vec<T> {
    fn put(&self, out: &mut String) {
        if self.is_empty() {
            out.push('-');
        }
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            item.put(out);
        }
    }
    fn take(text: &str) -> Result<Self, String> {
        match text {
            "-" => Ok(Vec::new()),
            _ => text.split(',').map(T::take).collect(),
        }
    }
}

/// A view, as the hex of its `Wire::Welcome` encoding: the codec already covers every
/// field of a view and is tested to round-trip.
impl Field for Arc<View> {
    fn put(&self, out: &mut String) {
        let mut bytes = BytesMut::new();
        codec::encode(
            &Wire::Welcome {
                view: Arc::clone(self),
            },
            &mut bytes,
        );
        for b in bytes.iter() {
            let _ = write!(out, "{b:02x}");
        }
    }
    fn take(text: &str) -> Result<Self, String> {
        if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("not an even-length hex string".to_string());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        match codec::decode(Bytes::from(bytes), &DecodeLimits::default()) {
            Ok(Wire::Welcome { view }) => Ok(view),
            Ok(_) => Err("encodes a message other than a view".to_string()),
            Err(e) => Err(format!("view does not decode: {e}")),
        }
    }
}

/// The fields of one line after its kind, taken in order.
struct Fields<'a>(std::str::Split<'a, char>);

impl Fields<'_> {
    fn take<T: Field>(&mut self, key: &'static str) -> Result<T, HistoryIoReason> {
        let token = self.0.next().ok_or(HistoryIoReason::MissingField(key))?;
        let why = match token.split_once('=') {
            Some((k, v)) if k == key => match T::take(v) {
                Ok(value) => return Ok(value),
                Err(why) => why,
            },
            _ => format!("expected `{key}=...`, found `{token}`"),
        };
        Err(HistoryIoReason::BadField { key, why })
    }
}

/// Generates the writer and the parser from one list of every variant's fields, in
/// declaration order, so the two cannot disagree; the writer's match has no `..`, so a
/// new variant or field of `Event` fails to compile until it is listed here.
macro_rules! event_lines {
    ($($kind:ident { $($field:ident),* })*) => {
        fn format_event(event: &Event) -> String {
            let mut line = String::with_capacity(96);
            match event {
                $(Event::$kind { $($field),* } => {
                    line.push_str(stringify!($kind));
                    $(
                        line.push_str(concat!(" ", stringify!($field), "="));
                        $field.put(&mut line);
                    )*
                })*
            }
            line
        }

        fn parse_line(text: &str) -> Result<Event, HistoryIoReason> {
            let mut tokens = text.split(' ');
            let kind = tokens.next().unwrap_or_default();
            let mut fields = Fields(tokens);
            // Struct fields are evaluated in the order written, which is the file's order.
            let event = match kind {
                $(stringify!($kind) => Event::$kind {
                    $($field: fields.take(stringify!($field))?),*
                },)*
                other => return Err(HistoryIoReason::UnknownKind(other.to_string())),
            };
            match fields.0.next() {
                None => Ok(event),
                Some(extra) => Err(HistoryIoReason::Trailing(extra.to_string())),
            }
        }
    };
}

event_lines! {
    Installed { at_us, member, view }
    Sent { at_us, member, subgroup, ticket, payload, len, probe }
    Aborted { at_us, member, subgroup, tickets }
    Arrived { at_us, member, from, view_id, subgroup, first_index, count }
    Delivered {
        at_us, member, view_id, subgroup, shard, sender, sender_index, version, kind, payload,
        ticket
    }
    ReadRequested { at_us, member, ticket, view_id, subgroup, shard }
    ReadBarrier { at_us, member, ticket, view_id, subgroup, shard, barrier }
    Persisted { at_us, member, subgroup, version }
    GlobalPersisted { at_us, member, subgroup, version }
    TrimLogged { at_us, member, view_id, subgroup, received }
    Trimmed { at_us, member, view_id, subgroup, shard, received }
    StateAtInstall { at_us, member, view_id, subgroup, digest }
    StateReceived { at_us, member, view_id, subgroup, digest }
    Stopped { at_us, member, reason }
    Crashed { at_us, member }
    Partitioned { at_us, minority }
    Healed { at_us }
    Paused { at_us, node, until_us }
    HealStarted { at_us }
    Finished { at_us, live, converged }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::layout::DeliveryMode;
    use crate::sim::checkers;
    use crate::sim::history::UNKNOWN_PAYLOAD;
    use crate::view::ShardView;

    fn write_all(events: &[Event]) -> Vec<u8> {
        let mut buf = Vec::new();
        for event in events {
            write_event(&mut buf, event).unwrap();
        }
        buf
    }

    #[test]
    fn simulated_runs_round_trip_and_check_the_same() {
        for seed in [1, 2, 3, 77] {
            let report = crate::sim::run_seed(seed);
            let events = &report.history.events;
            let buf = write_all(events);
            assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), events.len());
            let read = read_events(&buf[..]).unwrap();
            assert_eq!(&read, events, "seed {seed}");
            let mut history = History::new(report.history.seed);
            history.events = read;
            assert_eq!(checkers::check_all(&history), report.result, "seed {seed}");
        }
    }

    #[test]
    fn every_variant_round_trips() {
        let (a, b) = (MemberId::new(1, 0), MemberId::new(u32::MAX, 7));
        let shard = |state_source| ShardView {
            members: vec![a, b],
            mode: DeliveryMode::Raw,
            joined: vec![b],
            state_source,
        };
        let view = Arc::new(View {
            id: 3,
            members: vec![a, b],
            joined: vec![b],
            failed: vec![MemberId::new(2, 1)],
            left: vec![],
            shards: vec![vec![shard(Some(a)), shard(None)], vec![]],
        });
        let d = StateDigest {
            applied: 9,
            chain: u64::MAX,
        };
        let events = vec![
            Event::Installed {
                at_us: 0,
                member: a,
                view,
            },
            Event::Sent {
                at_us: 1,
                member: a,
                subgroup: 0,
                ticket: SendTicket(5),
                payload: 6,
                len: 7,
                probe: true,
            },
            Event::Aborted {
                at_us: 2,
                member: a,
                subgroup: 1,
                tickets: vec![],
            },
            Event::Aborted {
                at_us: 2,
                member: a,
                subgroup: 1,
                tickets: vec![SendTicket(1), SendTicket(2)],
            },
            Event::Arrived {
                at_us: 3,
                member: a,
                from: b,
                view_id: 3,
                subgroup: 0,
                first_index: 4,
                count: 5,
            },
            Event::Delivered {
                at_us: 4,
                member: b,
                view_id: 3,
                subgroup: 0,
                shard: 1,
                sender: a,
                sender_index: 2,
                version: Some(Version::new(3, 2)),
                kind: DeliveryKind::Stable,
                payload: 6,
                ticket: Some(SendTicket(5)),
            },
            Event::Delivered {
                at_us: 4,
                member: b,
                view_id: 3,
                subgroup: 0,
                shard: 1,
                sender: a,
                sender_index: 2,
                version: None,
                kind: DeliveryKind::Raw,
                payload: UNKNOWN_PAYLOAD,
                ticket: None,
            },
            Event::ReadRequested {
                at_us: 4,
                member: a,
                ticket: 0,
                view_id: 3,
                subgroup: 0,
                shard: 1,
            },
            Event::ReadBarrier {
                at_us: 4,
                member: a,
                ticket: 0,
                view_id: 3,
                subgroup: 0,
                shard: 1,
                barrier: Some(Version::new(3, 7)),
            },
            Event::ReadBarrier {
                at_us: 4,
                member: b,
                ticket: u64::MAX,
                view_id: 3,
                subgroup: 1,
                shard: 0,
                barrier: None,
            },
            Event::Persisted {
                at_us: 5,
                member: a,
                subgroup: 0,
                version: Version(u64::MAX),
            },
            Event::GlobalPersisted {
                at_us: 6,
                member: a,
                subgroup: 0,
                version: Version(1),
            },
            Event::TrimLogged {
                at_us: 7,
                member: a,
                view_id: 3,
                subgroup: 0,
                received: vec![1, 2, 3],
            },
            Event::Trimmed {
                at_us: 8,
                member: a,
                view_id: 3,
                subgroup: 0,
                shard: 0,
                received: vec![],
            },
            Event::StateAtInstall {
                at_us: 9,
                member: a,
                view_id: 3,
                subgroup: 0,
                digest: d,
            },
            Event::StateReceived {
                at_us: 10,
                member: b,
                view_id: 3,
                subgroup: 0,
                digest: d,
            },
            Event::Stopped {
                at_us: 11,
                member: a,
                reason: StopReason::Evicted,
            },
            Event::Stopped {
                at_us: 11,
                member: a,
                reason: StopReason::MinorityPartition,
            },
            Event::Stopped {
                at_us: 11,
                member: a,
                reason: StopReason::Left,
            },
            Event::Stopped {
                at_us: 11,
                member: a,
                reason: StopReason::FellBehind,
            },
            Event::Delivered {
                at_us: 4,
                member: b,
                view_id: 3,
                subgroup: 0,
                shard: 1,
                sender: a,
                sender_index: 2,
                version: None,
                kind: DeliveryKind::Trim,
                payload: 0,
                ticket: None,
            },
            Event::Crashed {
                at_us: 12,
                member: b,
            },
            Event::Partitioned {
                at_us: 13,
                minority: vec![4, 5],
            },
            Event::Healed { at_us: 14 },
            Event::Paused {
                at_us: 15,
                node: 2,
                until_us: 99,
            },
            Event::HealStarted { at_us: u64::MAX },
            Event::Finished {
                at_us: 17,
                live: vec![a, b],
                converged: false,
            },
            Event::Finished {
                at_us: 17,
                live: vec![],
                converged: true,
            },
        ];
        let buf = write_all(&events);
        assert_eq!(read_events(&buf[..]).unwrap(), events);
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("Crashed at_us=12 member=n4294967295.7\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ReadBarrier at_us=4 member=n4294967295.7 ticket=18446744073709551615 view_id=3 subgroup=1 shard=0 barrier=-\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Trimmed at_us=8 member=n1.0 view_id=3 subgroup=0 shard=0 received=-\n")
        );
    }

    #[test]
    fn truncated_last_line_is_skipped_but_bad_lines_are_errors() {
        let text = "Healed at_us=1\nCrashed at_us=2 member=n1.0\nCrashed at_us=3 mem";
        let events = read_events(text.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Healed { at_us: 1 },
                Event::Crashed {
                    at_us: 2,
                    member: MemberId::new(1, 0)
                }
            ]
        );
        assert_eq!(read_events(&b""[..]).unwrap(), vec![]);

        let err = |text: &str| read_events(text.as_bytes()).unwrap_err();
        let e = err("Healed at_us=1\nHealed at_us=x\nHealed at_us=3\n");
        assert_eq!(e.line, 2);
        assert!(
            matches!(e.reason, HistoryIoReason::BadField { key: "at_us", .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("history line 2:"), "{e}");
        let e = err("Healed at_us=1\nCrashed at_us=3\nHealed at_us=3\n");
        assert_eq!(
            (e.line, e.reason),
            (2, HistoryIoReason::MissingField("member"))
        );
        let e = err("Bogus at_us=1\n");
        assert_eq!(
            (e.line, e.reason),
            (1, HistoryIoReason::UnknownKind("Bogus".into()))
        );
        let e = err("Healed at_us=1\n\nHealed at_us=1\n");
        assert_eq!(
            (e.line, e.reason),
            (2, HistoryIoReason::UnknownKind(String::new()))
        );
        let e = err("Healed at_us=1 extra=2\n");
        assert_eq!(e.reason, HistoryIoReason::Trailing("extra=2".into()));
        let e = err("Healed us=1\n");
        assert!(matches!(
            e.reason,
            HistoryIoReason::BadField { key: "at_us", .. }
        ));
        let e = err("Crashed at_us=1 member=1.0\n");
        assert!(matches!(
            e.reason,
            HistoryIoReason::BadField { key: "member", .. }
        ));
        let e = err("Installed at_us=1 member=n1.0 view=0401\n");
        assert!(e.to_string().contains("view does not decode"), "{e}");
        let e = err("Installed at_us=1 member=n1.0 view=0g\n");
        assert!(
            matches!(e.reason, HistoryIoReason::BadField { key: "view", .. }),
            "{e}"
        );
        let e = read_events(&b"Healed at_us=1\n\xff\n"[..]).unwrap_err();
        assert_eq!((e.line, e.reason), (2, HistoryIoReason::NotUtf8));
    }

    #[test]
    fn merge_interleaves_by_time_and_keeps_each_file_in_order() {
        // `node` names the file, `until_us` the position within it.
        let ev = |file, pos, at_us| Event::Paused {
            at_us,
            node: file,
            until_us: pos,
        };
        let a = vec![ev(0, 0, 10), ev(0, 1, 5), ev(0, 2, 30)];
        let b = vec![ev(1, 0, 10), ev(1, 1, 20)];
        let history = merge(vec![a, vec![], b]);
        assert_eq!(history.seed, 0);
        let order: Vec<_> = history
            .events
            .iter()
            .map(|e| match e {
                Event::Paused { node, until_us, .. } => (*node, *until_us),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]);
    }
}
