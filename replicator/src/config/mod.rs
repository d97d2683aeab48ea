//! tandem's configuration: DRBD's syntax, validated in two stages.
//!
//! 1. [`syntax`] reads the text (and its includes) into a raw tree of items, keeping every
//!    word's `file:line:column`.
//! 2. [`validate`] checks keywords, values and ranges, merges `common` into each resource and
//!    produces the typed [`Config`]; options DRBD knows but tandem does not implement yet become
//!    [`Warning`]s, everything else wrong is a [`ConfigError`] naming where.
//!
//! [`Config::node_view`] then picks this node's `on` section (`--node`).

pub mod dump;
pub mod model;
pub mod syntax;
pub mod units;
pub mod validate;

use std::path::{Path, PathBuf};

pub use model::*;
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

impl Config {
    /// Reads, parses and validates the config file at `path` (with its includes).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let items = syntax::parse_file(path)?;
        validate::validate(&items)
    }

    /// Parses and validates config text; `name` is used in error positions and relative
    /// includes are resolved against the current directory.
    pub fn parse_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        let items = syntax::parse_text(text, name.into(), Path::new("."), 0)?;
        validate::validate(&items)
    }

    /// The resource called `name`.
    pub fn resource(&self, name: &str) -> Result<&Resource, ConfigError> {
        self.resources
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.resources.iter().map(|r| r.name.as_str()).collect();
                ConfigError::Invalid(if known.is_empty() {
                    format!("no resource '{name}': the config defines no resources")
                } else {
                    format!(
                        "no resource '{name}' in the config (it has: {})",
                        known.join(", ")
                    )
                })
            })
    }

    /// Resource `name` as seen from node `node`: fails with `file:line:column` when the
    /// resource has no `on NODE` section.
    pub fn node_view(&self, name: &str, node: &str) -> Result<NodeView<'_>, ConfigError> {
        let resource = self.resource(name)?;
        let local = resource.host(node).ok_or_else(|| {
            let hosts: Vec<&str> = resource.hosts.iter().map(|h| h.name.as_str()).collect();
            ConfigError::syntax(
                &resource.span,
                format!(
                    "resource {name} has no 'on {node}' section for this node (it has: {}); \
                     pass --node NAME to choose one",
                    hosts.join(", ")
                ),
            )
        })?;
        Ok(NodeView { resource, local })
    }
}

#[cfg(test)]
mod tests;
