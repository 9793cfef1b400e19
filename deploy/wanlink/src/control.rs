//! The control port: a line protocol for scripts (`nc`, bash `/dev/tcp`).
//!
//! One command per line, one reply line per command:
//!
//! ```text
//! delay <ms> [<jitter_ms>]   -> ok delay_ms=<ms> jitter_ms=<jitter_ms>   (jitter defaults to 0)
//! cut                        -> ok cut
//! restore                    -> ok up
//! status                     -> up delay_ms=50 jitter_ms=5 connections=3 bytes_up=.. bytes_down=.. ...
//! anything else              -> error <why>
//! ```
//!
//! `status` answers with the state word (`up` or `cut`) first, not `ok`. Blank lines
//! get no reply. A connection may send any number of commands; each is applied before
//! its reply is written.
//!
//! ```text
//! exec 3<>/dev/tcp/127.0.0.1/17999; echo cut >&3; read -r reply <&3; echo "$reply"
//! ```

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{WanLinkError, WanLinkHandle};

/// Longest accepted command line, in bytes; a longer one ends the control connection.
pub const CONTROL_LINE_BYTES_MAX: usize = 1024;
/// Control connections served at once; more wait in the listen backlog.
pub const CONTROL_CONNECTIONS_MAX: usize = 64;

/// One parsed control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    SetDelay { delay_ms: u64, jitter_ms: u64 },
    Cut,
    Restore,
    Status,
}

impl ControlCommand {
    /// Parses one line (surrounding whitespace ignored). `Ok(None)` for a blank line.
    pub fn parse(line: &str) -> Result<Option<ControlCommand>, WanLinkError> {
        let mut words = line.split_whitespace();
        let Some(verb) = words.next() else {
            return Ok(None);
        };
        let arguments: Vec<&str> = words.collect();
        let command = match (verb, arguments.as_slice()) {
            ("delay", [delay]) => ControlCommand::SetDelay {
                delay_ms: parse_ms("delay", delay)?,
                jitter_ms: 0,
            },
            ("delay", [delay, jitter]) => ControlCommand::SetDelay {
                delay_ms: parse_ms("delay", delay)?,
                jitter_ms: parse_ms("jitter", jitter)?,
            },
            ("delay", _) => return Err(syntax_error("usage: delay <ms> [<jitter_ms>]")),
            ("cut", []) => ControlCommand::Cut,
            ("restore", []) => ControlCommand::Restore,
            ("status", []) => ControlCommand::Status,
            ("cut" | "restore" | "status", _) => {
                return Err(syntax_error(&format!("'{verb}' takes no arguments")));
            }
            _ => {
                return Err(syntax_error(&format!(
                    "unknown command '{verb}' (expected delay <ms> [<jitter_ms>], cut, restore or status)"
                )));
            }
        };
        Ok(Some(command))
    }

    /// Applies the command and returns its reply line (without the newline).
    pub fn execute(self, handle: &WanLinkHandle) -> String {
        match self {
            ControlCommand::SetDelay {
                delay_ms,
                jitter_ms,
            } => match handle.set_delay(delay_ms, jitter_ms) {
                Ok(()) => format!("ok delay_ms={delay_ms} jitter_ms={jitter_ms}"),
                Err(error) => format!("error {error}"),
            },
            ControlCommand::Cut => {
                handle.cut();
                format!("ok {}", handle.state())
            }
            ControlCommand::Restore => {
                handle.restore();
                format!("ok {}", handle.state())
            }
            ControlCommand::Status => handle.status().to_string(),
        }
    }
}

fn parse_ms(what: &str, text: &str) -> Result<u64, WanLinkError> {
    text.parse::<u64>().map_err(|_| {
        syntax_error(&format!(
            "{what} '{text}' is not a whole number of milliseconds"
        ))
    })
}

fn syntax_error(reason: &str) -> WanLinkError {
    WanLinkError::ControlSyntax {
        reason: reason.to_owned(),
    }
}

/// The reply to one line: `None` for a blank line.
pub fn reply_to_line(handle: &WanLinkHandle, line: &str) -> Option<String> {
    match ControlCommand::parse(line) {
        Ok(None) => None,
        Ok(Some(command)) => Some(command.execute(handle)),
        Err(error) => Some(format!("error {error}")),
    }
}

/// Serves the control protocol on `listener` until the emulator behind `handle` stops.
/// Spawns one task per control connection on the current tokio runtime.
pub async fn serve_control(listener: TcpListener, handle: WanLinkHandle) {
    let connection_slots = Arc::new(Semaphore::new(CONTROL_CONNECTIONS_MAX));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&connection_slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = handle.stopped() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = handle.stopped() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "control accept failed");
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                if let Err(error) = serve_control_connection(stream, &handle).await {
                    debug!(%error, "control connection ended with an error");
                }
            }
            .instrument(info_span!("control", %peer)),
        );
    }
}

async fn serve_control_connection(
    stream: TcpStream,
    handle: &WanLinkHandle,
) -> std::io::Result<()> {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::with_capacity(CONTROL_LINE_BYTES_MAX);
    loop {
        line.clear();
        let read_bytes = (&mut reader)
            .take(CONTROL_LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if read_bytes == 0 {
            return Ok(());
        }
        if line.len() > CONTROL_LINE_BYTES_MAX {
            write_half
                .write_all(
                    format!("error line longer than {CONTROL_LINE_BYTES_MAX} bytes\n").as_bytes(),
                )
                .await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let Some(reply) = reply_to_line(handle, &text) else {
            continue;
        };
        info!(command = %text.trim(), %reply, "control");
        write_half
            .write_all(format!("{reply}\n").as_bytes())
            .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(
            ControlCommand::parse("delay 50").expect("valid"),
            Some(ControlCommand::SetDelay {
                delay_ms: 50,
                jitter_ms: 0
            })
        );
        assert_eq!(
            ControlCommand::parse("  delay 50 5\r\n").expect("valid"),
            Some(ControlCommand::SetDelay {
                delay_ms: 50,
                jitter_ms: 5
            })
        );
        assert_eq!(
            ControlCommand::parse("cut").expect("valid"),
            Some(ControlCommand::Cut)
        );
        assert_eq!(
            ControlCommand::parse("restore\n").expect("valid"),
            Some(ControlCommand::Restore)
        );
        assert_eq!(
            ControlCommand::parse("status").expect("valid"),
            Some(ControlCommand::Status)
        );
        assert_eq!(ControlCommand::parse(" \r\n").expect("blank"), None);
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        for (line, reason_part) in [
            ("delay", "usage"),
            ("delay 1 2 3", "usage"),
            ("delay -5", "whole number"),
            ("delay 5 x", "jitter 'x'"),
            ("cut now", "no arguments"),
            ("reboot", "unknown command 'reboot'"),
        ] {
            let error = ControlCommand::parse(line).expect_err(line);
            assert!(error.to_string().contains(reason_part), "{line}: {error}");
        }
    }
}
