//! Keys and pool paths: absolute, `/`-separated paths. A key belongs to the pool whose path
//! is one of its ancestors (`/photos/cats/1.jpg` is in pool `/photos`, or `/photos/cats`).
//! Validation is strict and cheap, so a bad key is refused at the door with a reason
//! instead of becoming an object nobody can address.

use thiserror::Error;

/// Longest key accepted unless a node is configured otherwise.
pub const KEY_BYTES_MAX_DEFAULT: usize = 1024;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("`{0}` is not an absolute path: keys and pool paths start with `/`")]
    NotAbsolute(String),
    #[error("`{0}` has an empty segment (`//`) or ends with `/`")]
    EmptySegment(String),
    #[error("`{0}` has a `.` or `..` segment")]
    DotSegment(String),
    #[error("`{0}` contains a control character")]
    ControlCharacter(String),
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("`/` is not a pool path: a pool needs a name")]
    Root,
}

/// Checks a key: absolute, no empty, `.` or `..` segments, no control characters, at most
/// `max` bytes.
pub fn validate_key(key: &str, max: usize) -> Result<(), KeyError> {
    if key.len() > max {
        return Err(KeyError::TooLong {
            len: key.len(),
            max,
        });
    }
    validate_path(key)
}

/// Checks a pool path like a key (it may not be `/` itself).
pub fn validate_pool_path(path: &str, max: usize) -> Result<(), KeyError> {
    if path == "/" {
        return Err(KeyError::Root);
    }
    validate_key(path, max)
}

fn validate_path(path: &str) -> Result<(), KeyError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(KeyError::NotAbsolute(path.to_string()));
    };
    if path.chars().any(char::is_control) {
        return Err(KeyError::ControlCharacter(path.escape_debug().to_string()));
    }
    for segment in rest.split('/') {
        match segment {
            "" => return Err(KeyError::EmptySegment(path.to_string())),
            "." | ".." => return Err(KeyError::DotSegment(path.to_string())),
            _ => {}
        }
    }
    Ok(())
}

/// `ancestor` is `path` or one of its ancestors, segment-wise (`/a` contains `/a/b`, not
/// `/ab`). A prefix written as a directory (`/a/`) contains what is below it.
pub fn contains(ancestor: &str, path: &str) -> bool {
    if ancestor.ends_with('/') {
        return path.starts_with(ancestor);
    }
    path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_paths_segment_wise() {
        assert!(contains("/a", "/a"));
        assert!(contains("/a", "/a/b"));
        assert!(!contains("/a", "/ab"));
        assert!(contains("/a/", "/a/b"));
        assert!(contains("/a/", "/a/b/c"));
        assert!(!contains("/a/", "/ab"));
        assert!(contains("/", "/a"));
    }

    #[test]
    fn keys_are_absolute_clean_paths() {
        for good in ["/a", "/photos/cats/1.jpg", "/a/b c/ü"] {
            assert_eq!(validate_key(good, 64), Ok(()), "{good}");
        }
        assert!(matches!(
            validate_key("a/b", 64),
            Err(KeyError::NotAbsolute(_))
        ));
        assert!(matches!(
            validate_key("/a//b", 64),
            Err(KeyError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_key("/a/", 64),
            Err(KeyError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_key("/a/../b", 64),
            Err(KeyError::DotSegment(_))
        ));
        assert!(matches!(
            validate_key("/a\nb", 64),
            Err(KeyError::ControlCharacter(_))
        ));
        assert_eq!(
            validate_key("/abcdef", 4),
            Err(KeyError::TooLong { len: 7, max: 4 })
        );
        assert_eq!(validate_pool_path("/", 64), Err(KeyError::Root));
    }

    #[test]
    fn containment_is_by_segment() {
        assert!(contains("/a", "/a/b"));
        assert!(contains("/a", "/a"));
        assert!(!contains("/a", "/ab"));
        assert!(!contains("/a/b", "/a"));
    }
}
