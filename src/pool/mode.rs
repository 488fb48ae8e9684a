//! `NodeMode`: how a node's connections come. A forward node is dialled by the daemon; a
//! reverse node dials in with its own `ssh -R` (reverse mode); an either node is dialled and
//! may also dial in, and a connect takes whichever comes first. The names are part of the
//! public interface (`status` MODE, `/status` `mode`, the `node_mode` metric).

use std::fmt;

/// How a node's connections come.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeMode {
    /// Dialled by the daemon over SSH.
    #[default]
    Forward,
    /// Only the node's own session (`ssh -R`): never dialled.
    Reverse,
    /// Dialled, and the node may dial in too: the first connection to come up wins.
    Either,
}

impl NodeMode {
    /// The public lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeMode::Forward => "forward",
            NodeMode::Reverse => "reverse",
            NodeMode::Either => "either",
        }
    }

    /// What `status` shows: the mode, and for an either node with a connection how that
    /// connection came (`either:reverse`, `either:forward`).
    pub fn shown(self, dialled_in: Option<bool>) -> String {
        match (self, dialled_in) {
            (NodeMode::Either, Some(true)) => "either:reverse".into(),
            (NodeMode::Either, Some(false)) => "either:forward".into(),
            (m, _) => m.as_str().into(),
        }
    }
}

impl fmt::Display for NodeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_either_node_shows_how_its_connection_came() {
        assert_eq!(NodeMode::Either.shown(Some(true)), "either:reverse");
        assert_eq!(NodeMode::Either.shown(Some(false)), "either:forward");
        assert_eq!(NodeMode::Either.shown(None), "either");
        assert_eq!(NodeMode::Reverse.shown(Some(true)), "reverse");
    }
}
