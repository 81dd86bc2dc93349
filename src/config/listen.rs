// SPDX-License-Identifier: GPL-3.0-or-later
//! Milter socket addresses in Postfix notation: `inet:HOST:PORT` or `unix:PATH`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the milter listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP socket; `host` is an IP address or a name resolved at start.
    Inet {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix-domain socket path.
    Unix(PathBuf),
}

/// Why a listen address does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    /// Neither `inet:` nor `unix:`.
    #[error("\"{0}\" is not a milter socket: use inet:HOST:PORT or unix:/PATH")]
    Scheme(String),
    /// No `:PORT`, or a port that is not 1-65535 (0 is allowed for tests).
    #[error("\"{0}\" has no valid port: use inet:HOST:PORT, e.g. inet:127.0.0.1:7785")]
    Port(String),
    /// Empty host.
    #[error("\"{0}\" has no host: use inet:HOST:PORT, e.g. inet:127.0.0.1:7785")]
    Host(String),
    /// A relative or empty unix socket path.
    #[error("\"{0}\" needs an absolute socket path, e.g. unix:/run/fanout-milter/milter.sock")]
    Path(String),
}

impl ListenAddr {
    /// True for a unix socket or a loopback address (`localhost` included): only this
    /// host can connect.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Unix(_) => true,
            ListenAddr::Inet { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// What to tell the admin when other hosts may connect: the milter protocol has no
    /// authentication.
    pub fn exposure_warning(&self) -> Option<String> {
        (!self.is_local()).then(|| {
            format!(
                "listen = \"{self}\" is neither a loopback address nor a unix socket: the milter \
                 protocol has no authentication, so anyone who reaches this port can trip storms, \
                 spend senders' rate budgets and fill the quarantine; listen on 127.0.0.1 or a \
                 unix socket, or let only the MTAs reach the port (firewall)"
            )
        })
    }
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("inet:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| ListenAddrError::Port(s.into()))?;
            let port: u16 = port.parse().map_err(|_| ListenAddrError::Port(s.into()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(ListenAddrError::Host(s.into()));
            }
            Ok(ListenAddr::Inet {
                host: host.into(),
                port,
            })
        } else if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if !path.starts_with('/') {
                return Err(ListenAddrError::Path(s.into()));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            Err(ListenAddrError::Scheme(s.into()))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            ListenAddr::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ListenAddr, ListenAddrError> {
        s.parse()
    }

    #[test]
    fn parses_postfix_notation() {
        assert_eq!(
            parse("inet:127.0.0.1:7785").unwrap(),
            ListenAddr::Inet {
                host: "127.0.0.1".into(),
                port: 7785
            }
        );
        assert_eq!(
            parse("inet:[::1]:7785").unwrap(),
            ListenAddr::Inet {
                host: "::1".into(),
                port: 7785
            }
        );
        assert_eq!(
            parse("inet:localhost:25").unwrap().to_string(),
            "inet:localhost:25"
        );
        assert_eq!(parse("inet:[::1]:1").unwrap().to_string(), "inet:[::1]:1");
        assert_eq!(
            parse("unix:/run/fanout-milter/milter.sock").unwrap(),
            ListenAddr::Unix("/run/fanout-milter/milter.sock".into())
        );
    }

    #[test]
    fn only_loopback_and_unix_sockets_are_local() {
        for local in [
            "inet:127.0.0.1:7785",
            "inet:127.0.0.2:7785",
            "inet:[::1]:7785",
            "inet:localhost:7785",
            "unix:/run/fanout-milter/milter.sock",
        ] {
            let addr = parse(local).unwrap();
            assert!(addr.is_local(), "{local}");
            assert_eq!(addr.exposure_warning(), None, "{local}");
        }
        for exposed in [
            "inet:0.0.0.0:7785",
            "inet:[::]:7785",
            "inet:192.0.2.10:7785",
            "inet:mx1.example.org:7785",
        ] {
            let addr = parse(exposed).unwrap();
            assert!(!addr.is_local(), "{exposed}");
            let warning = addr.exposure_warning().expect("a warning");
            assert!(warning.contains("no authentication"), "{warning}");
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        assert!(matches!(
            parse("127.0.0.1:7785"),
            Err(ListenAddrError::Scheme(_))
        ));
        assert!(matches!(
            parse("inet:127.0.0.1"),
            Err(ListenAddrError::Port(_))
        ));
        assert!(matches!(
            parse("inet:127.0.0.1:99999"),
            Err(ListenAddrError::Port(_))
        ));
        assert!(matches!(parse("inet::7785"), Err(ListenAddrError::Host(_))));
        assert!(matches!(
            parse("unix:relative.sock"),
            Err(ListenAddrError::Path(_))
        ));
        assert!(matches!(parse("unix:"), Err(ListenAddrError::Path(_))));
    }
}
