//! The SSRF guard: networks tokend never sends a provider request to, checked on the addresses a
//! host name **resolves** to (a custom DNS resolver under reqwest), and on literal IP hosts
//! (which reqwest does not resolve). A profile's endpoints come from admins and from issuer
//! metadata; a name that resolves to a cloud metadata address must not turn tokend into a proxy
//! for the instance's credentials. Loopback is not denied by default: local providers and tests
//! live there.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use oauth2::reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The deny-list used when the configuration names none: "this network" (0.0.0.0/8, `::`),
/// link-local (169.254.0.0/16, fe80::/10, where AWS, GCP, Azure and others serve instance
/// metadata at 169.254.169.254), AWS's IPv6 metadata address, Azure's wire server and Alibaba
/// Cloud's metadata address. Private networks are not in it: on-premises providers live there.
pub const DEFAULT_DENY_NETWORKS: &[&str] = &[
    "0.0.0.0/8",
    "169.254.0.0/16",
    "168.63.129.16/32",
    "100.100.100.200/32",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
];

/// One network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n`, `x:y::z/n`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP network (e.g. 169.254.0.0/16)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be a number from 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as
    /// their IPv4 address, so the mapping cannot be used to slip past an IPv4 entry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The configured deny-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    networks: Vec<Network>,
}

impl DenyList {
    /// Parses every entry; the error names the bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let networks = entries.iter().map(|e| Network::parse(e.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { networks })
    }

    /// The built-in list ([`DEFAULT_DENY_NETWORKS`]).
    pub fn default_list() -> Self {
        Self { networks: DEFAULT_DENY_NETWORKS.iter().filter_map(|n| Network::parse(n).ok()).collect() }
    }

    /// The entry that denies `ip`, if any.
    pub fn denies(&self, ip: IpAddr) -> Option<Network> {
        self.networks.iter().copied().find(|n| n.contains(ip))
    }

    /// Checks every address a host resolved to: one denied address refuses the host (a name
    /// that resolves to a metadata address among others is not one to trust).
    pub fn check(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), DeniedAddress> {
        match addrs.iter().find_map(|a| self.denies(a.ip()).map(|n| (a.ip(), n))) {
            Some((ip, network)) => Err(DeniedAddress { host: host.to_owned(), ip, network }),
            None => Ok(()),
        }
    }
}

/// A provider host that resolves to (or is) a denied address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DeniedAddress {
    /// The host name (or literal) as it appears in the endpoint URL.
    pub host: String,
    /// The denied address.
    pub ip: IpAddr,
    /// The entry of the deny-list that matched.
    pub network: Network,
}

impl fmt::Display for DeniedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        if literal {
            write!(f, "provider address {} is in the denied network {}", self.host, self.network)?;
        } else {
            write!(
                f,
                "provider host {} resolves to {}, which is in the denied network {}",
                self.host, self.ip, self.network
            )?;
        }
        f.write_str(" (provider.deny_networks: tokend never calls these addresses)")
    }
}

/// A DNS resolver that refuses hosts resolving into the deny-list; reqwest connects only to the
/// addresses it returns, so a name cannot be re-pointed between check and connect.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    deny: Arc<DenyList>,
}

impl GuardedResolver {
    /// A resolver over the system's (`getaddrinfo`, through tokio) that applies `deny`.
    pub fn new(deny: Arc<DenyList>) -> Self {
        Self { deny }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let deny = Arc::clone(&self.deny);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            deny.check(&host, &addrs)?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The address of a literal IP host in a URL (`[::1]` included), for the check reqwest's
/// resolver never sees.
pub fn literal_ip(host: &url::Host<&str>) -> Option<IpAddr> {
    match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        url::Host::Domain(d) => d.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The default list denies link-local and metadata addresses, IPv4-mapped ones too, and
    /// leaves loopback, private and public addresses alone.
    #[test]
    fn default_list() {
        let deny = DenyList::default_list();
        for denied in
            ["169.254.169.254", "169.254.0.1", "0.0.0.0", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254", "::"]
        {
            assert!(deny.denies(ip(denied)).is_some(), "{denied}");
        }
        for allowed in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "8.8.8.8", "2001:db8::1", "fd00:ec2::253"] {
            assert!(deny.denies(ip(allowed)).is_none(), "{allowed}");
        }
        assert_eq!(deny.denies(ip("169.254.169.254")).map(|n| n.to_string()).as_deref(), Some("169.254.0.0/16"));
    }

    /// Entries parse as networks or single hosts; bad ones are named.
    #[test]
    fn parsing() {
        assert_eq!(Network::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Network::parse(" 1.2.3.4 ").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(Network::parse("::1").unwrap().to_string(), "::1/128");
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Network::parse("::/0").unwrap().contains(ip("8.8.8.8")), "families do not mix");
        for bad in ["10.0.0.0/33", "fe80::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
        let err = DenyList::parse(&["10.0.0.0/8", "nope"]).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    /// The resolver refuses a name that resolves into the deny-list, and passes it otherwise.
    #[tokio::test]
    async fn resolver_refuses_denied_names() {
        let loopback = Arc::new(DenyList::parse(&["127.0.0.0/8", "::1/128"]).unwrap());
        let err = match GuardedResolver::new(loopback).resolve(Name::from_str("localhost").unwrap()).await {
            Ok(_) => panic!("localhost must be refused when loopback is denied"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("localhost") && err.contains("provider.deny_networks"), "{err}");
        let addrs = GuardedResolver::new(Arc::new(DenyList::default_list()))
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .map_err(|e| e.to_string())
            .unwrap();
        assert!(addrs.into_iter().all(|a| a.ip().is_loopback()));
    }
}
