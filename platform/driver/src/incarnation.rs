//! Incarnation numbers: every start of a node is a new incarnation (a restarted node must
//! never be mistaken for the one that crashed), counted in `<data dir>/incarnation`. The
//! new count is written to a temporary file, synced and renamed into place before it is
//! used, so a crash can never hand out the same number twice.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IncarnationError {
    #[error("incarnation file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("incarnation file {path} is corrupt: `{text}`")]
    Corrupt { path: String, text: String },
    #[error("incarnation counter exhausted")]
    Exhausted,
}

/// Counts one more start in `data_dir` (created if missing) and returns its number (1 for
/// the first start).
pub fn next_incarnation(data_dir: &Path) -> Result<u32, IncarnationError> {
    next_incarnation_from(data_dir, 1)
}

/// Whether `data_dir` has counted a start before (a node with no count is new, or its
/// data was lost).
pub fn has_incarnation(data_dir: &Path) -> bool {
    data_dir.join("incarnation").exists()
}

/// [`next_incarnation`], but at least `floor`: for a node whose count was lost (a wiped
/// or replaced disk) while a group that knew its earlier lives runs on, a floor above any
/// number it can have used (e.g. the clock's seconds) keeps it from reusing one.
pub fn next_incarnation_from(data_dir: &Path, floor: u32) -> Result<u32, IncarnationError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| IncarnationError::Io { path, source }
    };
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join("incarnation");
    let last = match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .map_err(|_| IncarnationError::Corrupt {
                path: path.display().to_string(),
                text: text.trim().to_string(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(&path)(e)),
    };
    let next = last
        .checked_add(1)
        .ok_or(IncarnationError::Exhausted)?
        .max(floor);
    let tmp = data_dir.join("incarnation.tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    writeln!(file, "{next}").map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_starts_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(next_incarnation(dir.path()).expect("first"), 1);
        assert_eq!(next_incarnation(dir.path()).expect("second"), 2);
        fs::write(dir.path().join("incarnation"), "x").expect("write");
        assert!(matches!(
            next_incarnation(dir.path()),
            Err(IncarnationError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_floor_lifts_the_count_and_counting_goes_on_from_there() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(!has_incarnation(dir.path()));
        assert_eq!(
            next_incarnation_from(dir.path(), 1_000).expect("first"),
            1_000
        );
        assert!(has_incarnation(dir.path()));
        assert_eq!(next_incarnation(dir.path()).expect("second"), 1_001);
        assert_eq!(next_incarnation_from(dir.path(), 10).expect("third"), 1_002);
    }
}
