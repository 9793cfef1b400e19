//! Word count, as a mapper and a reducer (one plugin, two roles by configuration):
//! - `{"role": "map"}` on `/wc/text`: splits each document into lower-case words and
//!   emits `word -> 1` for each, to `/wc/words` by `trigger_put` (nothing stored);
//! - `{"role": "reduce"}` on `/wc/words`, `stateful` (one word's inputs in order, on one
//!   worker): adds them up in memory and puts the running count under `/wc/counts/word`.
//!
//! The reducer's totals live in the process that receives a word's `trigger_put`s; the
//! node sends each key's `trigger_put` to the same replica, so a word is counted in one
//! place while the view is unchanged. Counting is at-least-once: a map re-run after a
//! failure counts its words again (a trigger_put is not de-duplicated).

use std::collections::HashMap;
use std::sync::Mutex;

use squall_udl::{Bytes, Context, Input, Udl, UdlError, export_udl};

enum Role {
    Map,
    Reduce(Mutex<HashMap<String, u64>>),
}

struct WordCount {
    role: Role,
}

impl WordCount {
    fn new(config: &str) -> Result<WordCount, String> {
        let compact: String = config.chars().filter(|c| !c.is_whitespace()).collect();
        let role = if compact.contains(r#""role":"map""#) {
            Role::Map
        } else if compact.contains(r#""role":"reduce""#) {
            Role::Reduce(Mutex::new(HashMap::new()))
        } else {
            return Err(format!(
                r#"expected {{"role": "map"}} or {{"role": "reduce"}}, got {config}"#
            ));
        };
        Ok(WordCount { role })
    }
}

impl Udl for WordCount {
    fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError> {
        match &self.role {
            Role::Map => {
                let text = std::str::from_utf8(&input.blob)
                    .map_err(|_| UdlError::new("the document is not UTF-8"))?;
                for word in text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                {
                    ctx.emit(&word.to_lowercase(), Bytes::from_static(b"1"))?;
                }
                Ok(())
            }
            Role::Reduce(counts) => {
                let word = input.key_suffix();
                let add: u64 = std::str::from_utf8(&input.blob)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| UdlError::new("a count must be a number"))?;
                let total = {
                    let mut counts = counts
                        .lock()
                        .map_err(|_| UdlError::new("the counts were poisoned by a panic"))?;
                    let total = counts.entry(word.to_string()).or_default();
                    *total += add;
                    *total
                };
                ctx.emit(word, Bytes::from(total.to_string()))
            }
        }
    }
}

export_udl! {
    uuid: "9d2f6b80-4c3a-4e71-8b5d-1a2b3c4d5e6f",
    description: "word count: map documents to words, reduce words to counts",
    constructor: WordCount::new,
}
