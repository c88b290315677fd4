//! The SSRF guard: networks tokend never sends a provider request to, checked on the addresses a
//! host name **resolves** to (a custom DNS resolver under reqwest), and on literal IP hosts
//! (which reqwest does not resolve). A profile's endpoints come from admins and from issuer
//! metadata; a name that resolves to a cloud metadata address must not turn tokend into a proxy
//! for the instance's credentials. Loopback is not denied by default: local providers and tests
//! live there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

    /// Whether `ip` itself is in this network (no other form of it is tried: see
    /// [`DenyList::denies`]). Addresses of the other family are never in it.
    pub fn contains(&self, ip: IpAddr) -> bool {
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

/// How an IPv6 address carries an IPv4 one; a connection to it may reach that IPv4 address
/// (through a NAT64 gateway, a 6to4 relay, the kernel's mapping or an old tunnel), so the
/// deny-list checks the IPv4 address too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d` (IPv4-mapped) or `::ffff:0:a.b.c.d` (IPv4-translated, SIIT).
    Mapped,
    /// `::a.b.c.d`, the deprecated IPv4-compatible form (`::` and `::1` excepted).
    Compatible,
    /// `64:ff9b::/96`, NAT64's well-known prefix (RFC 6052).
    Nat64,
    /// `64:ff9b:1::/48`, NAT64's local-use prefix (RFC 8215); the translation prefix may be
    /// /48, /56, /64 or /96 long, so each place RFC 6052 puts the IPv4 address is tried.
    Nat64LocalUse,
    /// `2002::/16`, 6to4: the 32 bits after the prefix (RFC 3056).
    SixToFour,
}

impl fmt::Display for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mapped => "IPv4-mapped",
            Self::Compatible => "IPv4-compatible",
            Self::Nat64 => "NAT64, 64:ff9b::/96",
            Self::Nat64LocalUse => "NAT64, 64:ff9b:1::/48",
            Self::SixToFour => "6to4, 2002::/16",
        })
    }
}

/// Where RFC 6052 puts the IPv4 address under a /48, /56, /64 and /96 translation prefix
/// (octet 8 is the reserved "u" octet), and where the zero suffix after it starts.
const NAT64_POSITIONS: [([usize; 4], usize); 4] =
    [([6, 7, 9, 10], 11), ([7, 9, 10, 11], 12), ([9, 10, 11, 12], 13), ([12, 13, 14, 15], 16)];

/// The IPv4 addresses an address under `64:ff9b:1::/48` may carry. The length of the operator's
/// translation prefix is not known here, so every RFC 6052 position counts whose reserved octet
/// and suffix are zero as that format requires (the /96 one always): `64:ff9b:1::808:808` reads
/// as 8.8.8.8 only, not also as 0.0.0.0.
fn nat64_local_use(b: &[u8; 16]) -> Vec<Ipv4Addr> {
    NAT64_POSITIONS
        .iter()
        .filter(|(_, suffix)| *suffix == 16 || (b[8] == 0 && b[*suffix..].iter().all(|x| *x == 0)))
        .map(|(i, _)| Ipv4Addr::new(b[i[0]], b[i[1]], b[i[2]], b[i[3]]))
        .collect()
}

/// The IPv4 addresses `ip` embeds, with the form; none for an IPv4 address or a plain IPv6 one.
fn embedded_ipv4(ip: IpAddr) -> Vec<(Ipv4Addr, Embedding)> {
    let IpAddr::V6(v6) = ip else { return Vec::new() };
    let b = v6.octets();
    let last = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let segments = v6.segments();
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => vec![(last, Embedding::Mapped)],
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => vec![(last, Embedding::Compatible)],
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => vec![(last, Embedding::Nat64)],
        [0x64, 0xff9b, 1, ..] => nat64_local_use(&b).into_iter().map(|v| (v, Embedding::Nat64LocalUse)).collect(),
        [0x2002, ..] => vec![(Ipv4Addr::new(b[2], b[3], b[4], b[5]), Embedding::SixToFour)],
        _ => Vec::new(),
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

    /// The entry that denies `ip`, if any: `ip` as it is, then every IPv4 address it embeds
    /// ([`Embedding`]), so an IPv6 spelling cannot slip past an IPv4 entry (and an entry such
    /// as `2002::/16` still matches the IPv6 address itself).
    pub fn denies(&self, ip: IpAddr) -> Option<Network> {
        self.denial(ip).map(|(network, _)| network)
    }

    /// The entry that denies `ip` and, when it matched an embedded IPv4 address, that address.
    fn denial(&self, ip: IpAddr) -> Option<(Network, Option<(Ipv4Addr, Embedding)>)> {
        if let Some(network) = self.networks.iter().copied().find(|n| n.contains(ip)) {
            return Some((network, None));
        }
        embedded_ipv4(ip).into_iter().find_map(|(v4, how)| {
            self.networks.iter().copied().find(|n| n.contains(IpAddr::V4(v4))).map(|n| (n, Some((v4, how))))
        })
    }

    /// Checks every address a host resolved to: one denied address refuses the host (a name
    /// that resolves to a metadata address among others is not one to trust).
    pub fn check(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), DeniedAddress> {
        match addrs.iter().find_map(|a| self.denial(a.ip()).map(|d| (a.ip(), d))) {
            Some((ip, (network, embedded))) => Err(DeniedAddress { host: host.to_owned(), ip, network, embedded }),
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
    /// The IPv4 address `ip` embeds, and how, when that is what matched.
    pub embedded: Option<(Ipv4Addr, Embedding)>,
}

impl fmt::Display for DeniedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        match (literal, self.embedded) {
            (true, None) => write!(f, "provider address {} is in", self.host)?,
            (false, None) => write!(f, "provider host {} resolves to {}, which is in", self.host, self.ip)?,
            (true, Some((v4, how))) => write!(f, "provider address {} embeds {v4} ({how}), which is in", self.host)?,
            (false, Some((v4, how))) => {
                write!(f, "provider host {} resolves to {}, which embeds {v4} ({how}), in", self.host, self.ip)?
            }
        }
        write!(f, " the denied network {} (provider.deny_networks: tokend never calls these addresses)", self.network)
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

    /// IPv6 forms that embed an IPv4 address are checked as that address too (#14 item 10):
    /// mapped, translated, compatible, NAT64 (both prefixes, each RFC 6052 position) and 6to4;
    /// `::1`, `::` and plain IPv6 addresses are not read as IPv4.
    #[test]
    fn embedded_ipv4_forms() {
        let deny = DenyList::default_list();
        for (denied, how) in [
            ("::ffff:169.254.169.254", Embedding::Mapped),
            ("::ffff:0:a9fe:a9fe", Embedding::Mapped),
            ("::169.254.169.254", Embedding::Compatible),
            ("64:ff9b::a9fe:a9fe", Embedding::Nat64),
            ("64:ff9b:1:a9fe:a9:fe00::", Embedding::Nat64LocalUse),
            ("64:ff9b:1:a9:fe:a9fe::", Embedding::Nat64LocalUse),
            ("64:ff9b:1:0:a9:fea9:fe00:0", Embedding::Nat64LocalUse),
            ("64:ff9b:1::a9fe:a9fe", Embedding::Nat64LocalUse),
            ("2002:a9fe:a9fe::1", Embedding::SixToFour),
        ] {
            let Some((network, Some((v4, found)))) = deny.denial(ip(denied)) else { panic!("{denied} not denied") };
            assert_eq!(
                (network.to_string(), v4.to_string(), found),
                ("169.254.0.0/16".into(), "169.254.169.254".into(), how)
            );
        }
        for allowed in [
            "::1",
            "2001:db8::a9fe:a9fe",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "64:ff9b:1::808:808",
            "64:ff9b:2::a9fe:a9fe",
        ] {
            assert_eq!(deny.denies(ip(allowed)), None, "{allowed}");
        }
        assert!(deny.denies(ip("::")).is_some(), "the unspecified address stays denied as itself");
        let six_to_four = DenyList::parse(&["2002::/16"]).unwrap();
        assert!(six_to_four.denies(ip("2002:808:808::1")).is_some(), "an IPv6 entry still matches the address itself");
        let err = deny.check("[64:ff9b::a9fe:a9fe]", &["[64:ff9b::a9fe:a9fe]:443".parse().unwrap()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider address [64:ff9b::a9fe:a9fe] embeds 169.254.169.254 (NAT64, 64:ff9b::/96), which is in the \
             denied network 169.254.0.0/16 (provider.deny_networks: tokend never calls these addresses)"
        );
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
