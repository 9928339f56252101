//! Outbound connections to addresses customers choose (webhook endpoints):
//! TLS with Mozilla's roots plus an optional private CA, and a resolver
//! that refuses internal addresses at connect time, so a name that
//! resolves (or later re-resolves) to a private address is caught too.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Whether `ip` is loopback, private, link-local, shared (CGNAT) or
/// otherwise not a public internet address: the usual server-side
/// request forgery targets, such as a cloud metadata service.
pub fn internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => internal_ip(IpAddr::V4(v4)),
            None => {
                ip.is_loopback()
                    || ip.is_unspecified()
                    || ip.is_multicast()
                    || (ip.segments()[0] & 0xfe00) == 0xfc00
                    || (ip.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Whether the host of a URL is internal by its spelling alone: an
/// internal IP literal, or `localhost` in any of its forms.
pub fn internal_literal(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    let lower = host.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || host.parse().is_ok_and(internal_ip)
}

/// Whether `host` resolves, right now, to any internal address. A name
/// that does not resolve is not refused here (the receiver may not be
/// published yet); the connect-time resolver still guards it.
pub async fn resolves_internal(host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let resolved = tokio::task::spawn_blocking(move || {
        (host.as_str(), port).to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>())
    })
    .await;
    matches!(resolved, Ok(Ok(addrs)) if addrs.iter().any(|a| internal_ip(a.ip())))
}

/// A DNS resolver for hyper's connector that drops internal addresses
/// unless they are allowed, and fails when nothing public is left.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private_networks: bool,
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = self.allow_private_networks;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = tokio::task::spawn_blocking(move || {
                (host.as_str(), 0).to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>())
            })
            .await
            .map_err(io::Error::other)??;
            let allowed: Vec<SocketAddr> =
                addrs.iter().copied().filter(|a| allow || !internal_ip(a.ip())).collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} resolves only to internal addresses", name.as_str()),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Reads every certificate of a PEM file; at least one must be there.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// A TLS client configuration trusting Mozilla's roots (compiled in, so
/// an image needs no CA bundle) and the certificates of `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub type HttpClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// An HTTP/1.1 client for `http://` and `https://` URLs with the guarded
/// resolver. IP literals skip the resolver; they are checked when an
/// endpoint is created.
pub fn http_client(
    connect_timeout: Duration,
    allow_private_networks: bool,
    ca_file: Option<&Path>,
) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private_networks });
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised_in_every_spelling() {
        for host in [
            "127.0.0.1",
            "localhost",
            "LOCALHOST.",
            "api.localhost",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[fd00::1]",
            "[fe80::1]",
        ] {
            assert!(internal_literal(host), "{host} should be internal");
        }
        for host in ["8.8.8.8", "crm.example.com", "[2606:4700::1111]", "100.128.0.1"] {
            assert!(!internal_literal(host), "{host} should be public");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_only_to_loopback() {
        use tower_service::Service;
        let name: Name = "localhost".parse().expect("a DNS name");
        let refused = GuardedResolver { allow_private_networks: false }.call(name.clone()).await;
        assert_eq!(refused.expect_err("loopback only").kind(), io::ErrorKind::PermissionDenied);
        let allowed = GuardedResolver { allow_private_networks: true }.call(name).await.expect("resolves");
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
        assert!(resolves_internal("localhost", 80).await);
    }
}
