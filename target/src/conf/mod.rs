//! tandem's configuration file, the part every binary shares: DRBD's syntax read into a raw
//! tree with `file:line:column` on every word ([`syntax`], with `include`), the error and
//! warning types, the small checks every section validator uses ([`check`]), and the typed
//! `targetd { ... }` block ([`targetd`]) that `targetd` serves from.
//!
//! It lives here rather than in `replicator` because `targetd` reads the same file and
//! `replicator` depends on this crate, never the reverse (DESIGN §2). `replicator::config`
//! validates everything else (resources, `common`, `cluster`) and re-exports these types, so
//! there is one lexer and one set of positions for the whole file.

pub mod check;
pub mod syntax;
pub mod targetd;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use syntax::Span;

/// The config file when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tandem/tandem.conf";

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A syntax or validation error at a place in a file.
    #[error("{span}: {message}")]
    At {
        /// Where.
        span: Span,
        /// What is wrong.
        message: String,
    },
    /// An error not tied to one place.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// An error at `span`.
    pub fn syntax(span: &Span, message: impl Into<String>) -> Self {
        ConfigError::At {
            span: span.clone(),
            message: message.into(),
        }
    }
}

/// A non-fatal finding, printed as `file:line:column: warning: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the option was written.
    pub span: Span,
    /// What is wrong and what tandem does about it.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.span, self.message)
    }
}

/// Parses DRBD's booleans.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "yes" | "on" | "true" => Ok(true),
        "no" | "off" | "false" => Ok(false),
        _ => Err(format!("'{text}' is not a boolean (use yes or no)")),
    }
}

/// A listening address written as `IP`, `IP:PORT`, `[V6]` or `[V6]:PORT`; `default_port` when
/// none is given. Names are not resolved here (that is I/O); `None` when `text` is none of these.
pub fn parse_socket_addr(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_take_the_default_port() {
        let p = |s| parse_socket_addr(s, 3260).map(|a| a.to_string());
        assert_eq!(p("127.0.0.1").as_deref(), Some("127.0.0.1:3260"));
        assert_eq!(p("127.0.0.1:1").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(p("::1").as_deref(), Some("[::1]:3260"));
        assert_eq!(p("[::1]").as_deref(), Some("[::1]:3260"));
        assert_eq!(p("[::1]:7").as_deref(), Some("[::1]:7"));
        assert_eq!(p("localhost"), None);
        assert_eq!(p("1.2.3.4:x"), None);
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("yes"), Ok(true));
        assert_eq!(parse_bool("off"), Ok(false));
        assert!(parse_bool("maybe").is_err());
    }
}
