//! Which of a Kubernetes Node's addresses the tunnel connects to, in order of preference —
//! the same idea as kube-apiserver's `--kubelet-preferred-address-types`. The default puts
//! InternalIP first: the control plane usually reaches nodes on their internal network (the
//! original tunneler insisted on ExternalIP and skipped nodes without one, #71855).

use std::fmt;
use std::str::FromStr;

use crate::error::ConfigError;

/// A `status.addresses[].type` of a Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    Hostname,
    InternalIP,
    ExternalIP,
    InternalDNS,
    ExternalDNS,
}

impl AddressType {
    const ALL: [AddressType; 5] = [
        AddressType::Hostname,
        AddressType::InternalIP,
        AddressType::ExternalIP,
        AddressType::InternalDNS,
        AddressType::ExternalDNS,
    ];

    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::Hostname => "Hostname",
            AddressType::InternalIP => "InternalIP",
            AddressType::ExternalIP => "ExternalIP",
            AddressType::InternalDNS => "InternalDNS",
            AddressType::ExternalDNS => "ExternalDNS",
        }
    }
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AddressType {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        AddressType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--node-address-types: '{s}' is not a node address type; use a comma-separated list of Hostname, InternalIP, ExternalIP, InternalDNS, ExternalDNS"
                ))
            })
    }
}

/// A preference order of address types (first match wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressTypes(pub Vec<AddressType>);

impl Default for AddressTypes {
    fn default() -> Self {
        AddressTypes(vec![
            AddressType::InternalIP,
            AddressType::ExternalIP,
            AddressType::Hostname,
        ])
    }
}

impl AddressTypes {
    /// Parses `InternalIP,ExternalIP,...`; refuses unknown and repeated types.
    pub fn parse(list: &str) -> Result<AddressTypes, ConfigError> {
        let mut out: Vec<AddressType> = Vec::new();
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            let t: AddressType = part.parse()?;
            if out.contains(&t) {
                return Err(ConfigError::Invalid(format!(
                    "--node-address-types: {t} is listed twice"
                )));
            }
            out.push(t);
        }
        if out.is_empty() {
            return Err(ConfigError::Invalid(
                "--node-address-types is empty; name at least one type, e.g. InternalIP,ExternalIP"
                    .into(),
            ));
        }
        Ok(AddressTypes(out))
    }
}

impl fmt::Display for AddressTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|t| t.as_str()).collect();
        f.write_str(&names.join(","))
    }
}
