//! `--download` against a local HTTP server: a good tarball is verified and extracted; a
//! corrupted one is rejected by its MD5 and leaves nothing behind.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use md5::{Digest, Md5};
use resnet_data::{download_and_extract, load_cifar, CifarKind, DownloadSpec};

/// A gzipped tar holding `cifar-10-batches-bin/` with tiny but valid CIFAR-10 files.
fn fake_tarball() -> Vec<u8> {
    let mut record = vec![3u8];
    record.extend(std::iter::repeat_n(77u8, 3072));
    let mut tar = tar::Builder::new(Vec::new());
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(record.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-bin/{f}"),
            record.as_slice(),
        )
        .expect("append");
    }
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    gz.finish().expect("gzip")
}

/// Serves `body` to each of `requests` connections on 127.0.0.1; returns the URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut s = stream.expect("accept");
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

fn md5_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn spec(url: String, md5: String) -> DownloadSpec {
    DownloadSpec {
        url,
        md5,
        archive: "cifar-10-binary.tar.gz".into(),
        folder: "cifar-10-batches-bin".into(),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn downloads_verifies_and_extracts() {
    let tgz = fake_tarball();
    let url = serve(tgz.clone(), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut last = (0, None);
    let out = download_and_extract(&spec(url, md5_hex(&tgz)), dir.path(), &mut |d, t| {
        last = (d, t)
    })
    .expect("download");
    assert_eq!(
        last,
        (tgz.len() as u64, Some(tgz.len() as u64)),
        "progress must reach the total"
    );
    assert!(out.ends_with("cifar-10-batches-bin"));
    let ds = load_cifar(CifarKind::Cifar10, dir.path(), true, None).expect("load extracted");
    assert_eq!(ds.labels, vec![3; 5]);
    assert_eq!(
        entries(dir.path()),
        vec!["cifar-10-batches-bin"],
        "archive and staging must be cleaned up"
    );
}

#[test]
fn corrupted_tarball_is_rejected_and_leaves_nothing() {
    let mut tgz = fake_tarball();
    let good_md5 = md5_hex(&tgz);
    let mid = tgz.len() / 2;
    tgz[mid] ^= 0xff;
    let url = serve(tgz, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = download_and_extract(
        &spec(url.clone(), good_md5.clone()),
        dir.path(),
        &mut |_, _| {},
    )
    .expect_err("corrupt")
    .to_string();
    assert!(
        e.contains("MD5 mismatch") && e.contains(&good_md5) && e.contains(&url),
        "{e}"
    );
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );
}

#[test]
fn unreachable_server_is_a_download_error() {
    // Bind then drop to get a port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/x.tar.gz");
    let dir = tempfile::tempdir().expect("tempdir");
    let e = download_and_extract(
        &spec(url.clone(), "0".repeat(32)),
        dir.path(),
        &mut |_, _| {},
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains(&url), "{e}");
}
