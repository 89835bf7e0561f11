//! Session-ticket keys shared by a fleet of gateways (`--ticket-keys FILE`).
//!
//! The file holds one key per line, base64 of 48 bytes (16-byte key name, 32-byte AES-256
//! key), as `openssl rand -base64 48` prints. The **first** line is the newest key and
//! encrypts new tickets; every line decrypts (the nginx convention). Rotate by writing a new
//! first line, keeping the previous keys below it for a ticket lifetime, then reloading every
//! instance (SIGHUP or `--reload-interval`). Lines that are empty or start with `#` are
//! ignored. A file of raw binary 48-byte records (first encrypts) is accepted too.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use onerecord_tls::{ConfigError, TicketKeys};

/// Length of one key record.
pub const KEY_LEN: usize = 48;

/// Parse the file contents into keys whose tickets live for `lifetime`.
pub fn parse(contents: &[u8], lifetime: Duration) -> Result<TicketKeys, ConfigError> {
    // Text only if every byte is printable ASCII or whitespace; raw key bytes almost never are.
    let is_text = !contents.is_empty()
        && contents
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    let raw = match std::str::from_utf8(contents) {
        Ok(text) if is_text && !text.trim().is_empty() => {
            let mut raw = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .map_err(|e| ConfigError::BadTicketKeys {
                        detail: format!("line {}: not base64: {e}", n + 1),
                    })?;
                if key.len() != KEY_LEN {
                    return Err(ConfigError::BadTicketKeys {
                        detail: format!(
                            "line {}: {} bytes, a key is {KEY_LEN} (openssl rand -base64 48)",
                            n + 1,
                            key.len()
                        ),
                    });
                }
                raw.extend_from_slice(&key);
            }
            raw
        }
        _ => contents.to_vec(),
    };
    TicketKeys::from_bytes(&raw, lifetime)
}

/// Read and parse a ticket-key file; errors name the file.
pub fn load(path: &Path, lifetime: Duration) -> Result<TicketKeys, ConfigError> {
    let contents = std::fs::read(path).map_err(|e| ConfigError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    parse(&contents, lifetime).map_err(|e| e.in_file(path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lines_and_binary_are_accepted() {
        let a = base64::engine::general_purpose::STANDARD.encode([7u8; 48]);
        let b = base64::engine::general_purpose::STANDARD.encode([9u8; 48]);
        let text = format!("# fleet keys\n{a}\n\n{b}\n");
        let keys = parse(text.as_bytes(), Duration::from_secs(3600)).unwrap();
        assert_eq!(keys.len(), 2);
        let bin = parse(&[3u8; 96], Duration::from_secs(3600)).unwrap();
        assert_eq!(bin.len(), 2);
        let mut mixed = [0x41u8; 48].to_vec();
        mixed[5] = 0xff;
        assert_eq!(parse(&mixed, Duration::from_secs(3600)).unwrap().len(), 1);
    }

    #[test]
    fn wrong_lengths_are_named() {
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let err = parse(short.as_bytes(), Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        assert!(parse(b"not base64 !!\n", Duration::from_secs(60)).is_err());
    }
}
