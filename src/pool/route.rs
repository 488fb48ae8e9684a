//! Which node a destination goes through. Today: the node whose name or address is the
//! destination host (IP literals compared as addresses, so IPv6 spellings agree). Pod CIDRs
//! and "least-loaded ready node" for service IPs come with the CONNECT front.

use crate::destination::Destination;
use crate::node::Node;

/// Picks the node for `dest` among `nodes`, by name or address.
pub fn route<'a, I>(nodes: I, dest: &Destination) -> Option<&'a Node>
where
    I: IntoIterator<Item = &'a Node>,
{
    nodes.into_iter().find(|n| n.matches_host(&dest.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_name_and_address_v4_v6() {
        let nodes = [
            Node::parse_spec("a=10.0.0.1").unwrap(),
            Node::parse_spec("b=[fd00::2]:22").unwrap(),
        ];
        let pick = |d: &str| route(&nodes, &d.parse().unwrap()).map(|n| n.name.clone());
        assert_eq!(pick("10.0.0.1:10250").as_deref(), Some("a"));
        assert_eq!(pick("[fd00:0::2]:10250").as_deref(), Some("b"));
        assert_eq!(pick("b:10250").as_deref(), Some("b"));
        assert_eq!(pick("10.0.0.9:10250"), None);
    }
}
