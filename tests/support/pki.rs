//! A throwaway PKI for TLS tests, made with the `openssl` command: a CA, a
//! server certificate for chosen DNS names, a client certificate, and a
//! second, unrelated CA to prove that a wrong CA is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test PKI, in a temp dir that lives as long as this value.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN = `client_cn`) and key.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `openssl req` with a new P-256 key in `NAME.key` for subject `/CN=cn`,
/// writing `out`, with `extra` arguments (`-x509` for a self-signed certificate).
fn new_key_request(dir: &Path, name: &str, cn: &str, out: &str, extra: &[&str]) {
    let (key, subject) = (format!("{name}.key"), format!("/CN={cn}"));
    let mut args = vec!["req"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        out,
        "-subj",
        &subject,
    ]);
    openssl(dir, &args);
}

fn ca(dir: &Path, name: &str) {
    new_key_request(
        dir,
        name,
        name,
        &format!("{name}.crt"),
        &[
            "-x509",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn leaf(dir: &Path, name: &str, cn: &str, ext: &str) {
    new_key_request(dir, name, cn, &format!("{name}.csr"), &[]);
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

impl Pki {
    /// A CA, a server certificate valid for `dns_names` only, and a client
    /// certificate with common name `client_cn`.
    pub fn new(dns_names: &[&str], client_cn: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "ca");
        ca(d, "other-ca");
        let san: Vec<String> = dns_names.iter().map(|n| format!("DNS:{n}")).collect();
        leaf(d, "server", dns_names[0], &format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n", san.join(",")));
        leaf(
            d,
            "client",
            client_cn,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        );
        Pki {
            ca: d.join("ca.crt"),
            other_ca: d.join("other-ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            _dir: dir,
        }
    }
}
