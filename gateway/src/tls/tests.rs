use std::collections::HashMap;

use keygate_proto::agent::v1 as pb;
use rcgen::{CertificateParams, KeyPair, SerialNumber};

use super::certs::TlsSpec;
use super::config::{SslConfig, TlsConfig};
use super::der::cert_info;
use super::pem;
use crate::secrets::SecretSnapshot;

struct Pair {
    cert: String,
    key: String,
}

fn self_signed(names: &[&str], serial: u8, not_after_year: i32) -> Pair {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.serial_number = Some(SerialNumber::from(vec![serial, 0xab]));
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn ssls(yaml: &str) -> Vec<SslConfig> {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn snapshot(fields: &[(&str, &str, &str)]) -> SecretSnapshot {
    let mut by_name: HashMap<&str, pb::Secret> = HashMap::new();
    for (name, field, value) in fields {
        let secret = by_name.entry(name).or_insert_with(|| pb::Secret {
            name: (*name).to_owned(),
            state: pb::SecretState::Loaded as i32,
            version: 1,
            ..Default::default()
        });
        secret
            .fields
            .insert((*field).to_owned(), value.as_bytes().to_vec());
    }
    SecretSnapshot::from_proto(pb::Snapshot {
        version: 1,
        boot_id: "test".into(),
        secrets: by_name.into_values().collect(),
    })
}

const NOW: i64 = 1_800_000_000; // 2027-01-15

#[test]
fn cert_info_reads_serial_and_validity() {
    let pair = self_signed(&["a.example.com"], 0x01, 2030);
    let der = pem::certificates(pair.cert.as_bytes()).unwrap();
    let info = cert_info(der[0].as_ref()).unwrap();
    assert_eq!(info.serial, "01:ab");
    assert_eq!(info.not_before, 1_577_836_800);
    assert_eq!(info.not_after, 1_893_456_000);
    assert!(info.self_issued);
}

#[test]
fn private_keys_parse_and_bad_ones_say_why() {
    let pair = self_signed(&["a.example.com"], 1, 2030);
    assert!(pem::private_key(pair.key.as_bytes()).is_ok());
    assert_eq!(
        pem::private_key(pair.cert.as_bytes()).err(),
        Some(pem::PemError::NoKey)
    );
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert_eq!(
        pem::private_key(encrypted.as_bytes()).err(),
        Some(pem::PemError::Encrypted)
    );
    let truncated = pair.key.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(matches!(
        pem::private_key(truncated.as_bytes()),
        Err(pem::PemError::BadKey(_))
    ));
}

#[test]
fn sni_picks_exact_then_wildcard_then_fallback() {
    let a = self_signed(&["api.example.com"], 0x0a, 2030);
    let b = self_signed(&["*.example.com"], 0x0b, 2030);
    let yaml = format!(
        "- {{id: a, snis: [api.example.com], cert: {:?}, key: {:?}}}\n- {{id: b, snis: ['*.example.com'], cert: {:?}, key: {:?}}}\n",
        a.cert, a.key, b.cert, b.key
    );
    let env = |_: &str| None;
    let spec = TlsSpec::build(&ssls(&yaml), None, &env).unwrap();
    let certs = spec.resolve(None, None, NOW);
    assert!(certs.ready(NOW));
    let id = |sni: Option<&str>| certs.select(sni).map(|c| c.id.to_string());
    assert_eq!(id(Some("api.example.com")).as_deref(), Some("a"));
    assert_eq!(id(Some("www.example.com")).as_deref(), Some("b"));
    // A wildcard covers exactly one label.
    assert_eq!(id(Some("a.b.example.com")), None);
    assert_eq!(id(Some("example.com")), None);
    assert_eq!(id(None), None);

    let tls: TlsConfig =
        serde_yaml_ng::from_str("{listen: '127.0.0.1:0', fallback_sni: www.example.com}").unwrap();
    let spec = TlsSpec::build(&ssls(&yaml), Some(&tls), &env).unwrap();
    let certs = spec.resolve(None, None, NOW);
    let id = |sni: Option<&str>| certs.select(sni).map(|c| c.id.to_string());
    assert_eq!(id(None).as_deref(), Some("b"));
    assert_eq!(id(Some("other.test")).as_deref(), Some("b"));
    assert_eq!(id(Some("api.example.com")).as_deref(), Some("a"));
}

#[test]
fn bad_ssls_are_config_errors_by_field() {
    let a = self_signed(&["a.example.com"], 1, 2030);
    let b = self_signed(&["b.example.com"], 2, 2030);
    let env = |_: &str| None;
    let err = |yaml: String, tls: Option<&str>| {
        let tls: Option<TlsConfig> = tls.map(|t| serde_yaml_ng::from_str(t).unwrap());
        TlsSpec::build(&ssls(&yaml), tls.as_ref(), &env)
            .unwrap_err()
            .to_string()
    };
    let e = err(
        format!(
            "- {{snis: [a.example.com], cert: {:?}, key: {:?}}}",
            a.cert, b.key
        ),
        None,
    );
    assert!(
        e.contains("ssls[0].key") && e.contains("does not match"),
        "{e}"
    );
    let e = err(
        format!(
            "- {{snis: [a.example.com], cert: {:?}, key: {:?}}}\n- {{snis: [a.example.com], cert: {:?}, key: {:?}}}",
            a.cert, a.key, a.cert, a.key
        ),
        None,
    );
    assert!(
        e.contains("ssls[1].snis") && e.contains("also served"),
        "{e}"
    );
    let e = err(
        format!(
            "- {{snis: ['a.*.com'], cert: {:?}, key: {:?}}}",
            a.cert, a.key
        ),
        None,
    );
    assert!(e.contains("ssls[0].snis"), "{e}");
    let e = err(
        "- {snis: [a.example.com], cert: nope, key: nope}".into(),
        None,
    );
    assert!(e.contains("ssls[0].cert"), "{e}");
    let e = err(
        "- {snis: [a.example.com], pki: gw, key: '$secret://vault/x/y'}".into(),
        None,
    );
    assert!(e.contains("ssls[0].pki"), "{e}");
    let e = err(
        format!(
            "- {{snis: [a.example.com], cert: {:?}, key: {:?}}}",
            a.cert, a.key
        ),
        Some("{listen: '127.0.0.1:0', fallback_sni: b.example.com}"),
    );
    assert!(e.contains("tls.fallback_sni"), "{e}");
}

#[test]
fn agent_material_is_resolved_per_snapshot_and_checked() {
    let a = self_signed(&["a.example.com"], 0x01, 2030);
    let other = self_signed(&["a.example.com"], 0x02, 2030);
    let old = self_signed(&["a.example.com"], 0x03, 2021);
    let env = |_: &str| None;
    let spec = TlsSpec::build(
        &ssls("- {id: a, snis: [a.example.com], cert: '$secret://vault/tls/a/cert', key: '$secret://vault/tls/a/key'}\n- {id: p, snis: [p.example.com], pki: gw}"),
        None,
        &env,
    )
    .unwrap();
    let names: Vec<&str> = spec.agent_names().collect();
    assert!(
        names.contains(&"tls/a") && names.contains(&"@pki/gw"),
        "{names:?}"
    );

    // Nothing from the agent yet: not ready, nothing served (fail closed).
    let certs = spec.resolve(None, None, NOW);
    assert!(!certs.ready(NOW));
    assert!(certs.select(Some("a.example.com")).is_none());

    let snap = snapshot(&[
        ("tls/a", "cert", &a.cert),
        ("tls/a", "key", &a.key),
        ("@pki/gw", "certificate", &other.cert),
        ("@pki/gw", "private_key", &other.key),
        ("@pki/gw", "ca_chain", &a.cert),
    ]);
    let certs = spec.resolve(Some(&snap), None, NOW);
    assert!(
        certs.ready(NOW),
        "{:?}",
        certs.unavailable(NOW).collect::<Vec<_>>()
    );
    let served = certs.select(Some("a.example.com")).unwrap();
    assert_eq!(served.info.serial, "01:ab");
    // A self-issued ca_chain entry (a root) is not sent.
    assert_eq!(
        certs.select(Some("p.example.com")).unwrap().key.cert.len(),
        1
    );

    // Key of another certificate: refused, by id, without the material in the error.
    let snap = snapshot(&[
        ("tls/a", "cert", &a.cert),
        ("tls/a", "key", &other.key),
        ("@pki/gw", "certificate", &old.cert),
        ("@pki/gw", "private_key", &old.key),
    ]);
    let certs = spec.resolve(Some(&snap), None, NOW);
    let reasons: HashMap<&str, String> = certs.unavailable(NOW).collect();
    assert!(reasons["a"].contains("does not match"), "{reasons:?}");
    assert!(reasons["p"].contains("expired"), "{reasons:?}");
    assert!(certs.select(Some("a.example.com")).is_none());
    assert!(certs.select(Some("p.example.com")).is_none());
    for why in reasons.values() {
        assert!(!why.contains("BEGIN"), "{why}");
    }
}

/// A handshake in memory against the listener's configuration: the certificate served,
/// or `None` if the server refused.
async fn handshake(
    server: std::sync::Arc<rustls::ServerConfig>,
    ca_pem: &str,
    sni: &str,
) -> Option<String> {
    use rustls::pki_types::ServerName;
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem::certificates(ca_pem.as_bytes()).unwrap() {
        roots.add(cert).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept =
        tokio::spawn(async move { tokio_rustls::TlsAcceptor::from(server).accept(b).await });
    let connected = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), a)
        .await;
    let _ = accept.await;
    let stream = connected.ok()?;
    let leaf = stream.get_ref().1.peer_certificates()?.first()?.clone();
    Some(cert_info(leaf.as_ref()).unwrap().serial)
}

#[tokio::test]
async fn handshakes_get_the_current_certificate_and_expired_ones_are_refused() {
    use std::sync::atomic::Ordering;

    use arc_swap::ArcSwap;

    use super::resolver::{SniResolver, TlsCounters, server_config};

    let first = self_signed(&["a.example.com"], 0x01, 2030);
    let second = self_signed(&["a.example.com"], 0x02, 2030);
    let short = self_signed(&["a.example.com"], 0x03, 2021);
    let env = |_: &str| None;
    let spec = TlsSpec::build(
        &ssls("- {id: a, snis: [a.example.com], cert: '$secret://vault/tls/a/cert', key: '$secret://vault/tls/a/key'}"),
        None,
        &env,
    )
    .unwrap();
    let snap =
        |pair: &Pair| snapshot(&[("tls/a", "cert", &pair.cert), ("tls/a", "key", &pair.key)]);
    let now = super::unix_now();
    let certs = std::sync::Arc::new(ArcSwap::from_pointee(spec.resolve(
        Some(&snap(&first)),
        None,
        now,
    )));
    let counters = std::sync::Arc::new(TlsCounters::default());
    let server = server_config(SniResolver::new(certs.clone(), counters.clone())).unwrap();

    assert_eq!(
        handshake(server.clone(), &first.cert, "a.example.com")
            .await
            .as_deref(),
        Some("01:ab")
    );
    assert_eq!(
        handshake(server.clone(), &first.cert, "b.example.com").await,
        None
    );
    assert_eq!(counters.unknown_sni.load(Ordering::Relaxed), 1);

    // A new snapshot: the next handshake gets the new certificate.
    let previous = certs.load_full();
    certs.store(std::sync::Arc::new(spec.resolve(
        Some(&snap(&second)),
        Some(&previous),
        now,
    )));
    assert_eq!(
        handshake(server.clone(), &second.cert, "a.example.com")
            .await
            .as_deref(),
        Some("02:ab")
    );

    // Installed while it was valid (resolved "in 2020"), expired by now: refused at the
    // handshake, counted.
    certs.store(std::sync::Arc::new(spec.resolve(
        Some(&snap(&short)),
        None,
        1_600_000_000,
    )));
    assert_eq!(
        handshake(server.clone(), &short.cert, "a.example.com").await,
        None
    );
    assert_eq!(counters.expired.load(Ordering::Relaxed), 1);
    assert!(!certs.load().ready(now));
}
