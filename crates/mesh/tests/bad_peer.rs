//! A peer speaking garbage, or not who it claims: that link is closed with a reason, the node
//! keeps running and accepts well-behaved peers.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use meshgate_broker::{Broker, BrokerConfig};
use meshgate_mesh::{Mesh, MeshConfig, frame, tls};
use meshgate_proto::LINK_PROTOCOL_VERSION;
use meshgate_proto::v1::{Frame, Hello, frame::Body};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

async fn start(dir: &std::path::Path, name: &str) -> (Mesh, watch::Sender<bool>) {
    let t = tls::load(dir, name).unwrap();
    let cfg = MeshConfig::new(name.into(), "127.0.0.1:0".parse().unwrap(), t);
    let broker = Broker::new(BrokerConfig {
        node_name: name.into(),
        ..Default::default()
    });
    let (tx, rx) = watch::channel(false);
    (Mesh::start(broker, cfg, rx).await.unwrap(), tx)
}

/// A raw QUIC client holding the certificate of `name`.
fn client(dir: &std::path::Path, name: &str) -> quinn::Endpoint {
    let t = tls::load(dir, name).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(t.client.clone()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

fn hello(node: &str, version: u32) -> BytesMut {
    let mut b = BytesMut::new();
    frame::encode(
        &Frame {
            body: Some(Body::Hello(Hello {
                node: node.into(),
                incarnation: 1,
                protocol_version: version,
                ..Default::default()
            })),
        },
        &mut b,
    );
    b
}

/// Connects as `cert`, sends `first` on the control stream, optionally reads the node's Hello
/// and sends `then`; returns the reason the node closed the connection with.
async fn session(
    dir: &std::path::Path,
    cert: &str,
    mesh: &Mesh,
    first: BytesMut,
    then: Option<BytesMut>,
) -> String {
    let ep = client(dir, cert);
    let conn = ep
        .connect(mesh.local_addr(), "meshgate")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&first).await.unwrap();
    if let Some(then) = then {
        let mut buf = BytesMut::with_capacity(4096);
        // The node's Hello arrives first.
        let mut got = None;
        while got.is_none() {
            assert!(recv.read_buf(&mut buf).await.unwrap() > 0);
            got = frame::decode(&mut buf, 1 << 20).unwrap();
        }
        send.write_all(&then).await.unwrap();
    }
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the node closes the connection");
    reason.to_string()
}

#[tokio::test]
async fn garbage_and_impostors_are_refused_with_a_reason() {
    let d = tempfile::tempdir().unwrap();
    tls::init_ca(d.path()).unwrap();
    for n in ["node", "x", "y"] {
        tls::issue(d.path(), n).unwrap();
    }
    let (mesh, _stop) = start(d.path(), "node").await;

    let r = session(d.path(), "x", &mesh, hello("x", 99), None).await;
    assert!(r.contains("unsupported link protocol version 99"), "{r}");

    let r = session(
        d.path(),
        "x",
        &mesh,
        hello("y", LINK_PROTOCOL_VERSION),
        None,
    )
    .await;
    assert!(r.contains("does not name node \"y\""), "{r}");

    let r = session(
        d.path(),
        "x",
        &mesh,
        hello("node", LINK_PROTOCOL_VERSION),
        None,
    )
    .await;
    assert!(r.contains("this node's own name"), "{r}");

    let mut huge = BytesMut::new();
    huge.put_u32(1 << 30);
    let r = session(
        d.path(),
        "x",
        &mesh,
        hello("x", LINK_PROTOCOL_VERSION),
        Some(huge),
    )
    .await;
    assert!(r.contains("exceeds the maximum"), "{r}");

    let mut junk = BytesMut::new();
    junk.put_u32(3);
    junk.put_slice(&[0xff, 0xff, 0xff]);
    let r = session(
        d.path(),
        "x",
        &mesh,
        hello("x", LINK_PROTOCOL_VERSION),
        Some(junk),
    )
    .await;
    assert!(r.contains("malformed frame"), "{r}");

    let mut not_hello = BytesMut::new();
    frame::encode(
        &Frame {
            body: Some(Body::Ping(Default::default())),
        },
        &mut not_hello,
    );
    let r = session(d.path(), "x", &mesh, not_hello, None).await;
    assert!(r.contains("first frame is not a Hello"), "{r}");

    // The node still runs and links with a peer that behaves.
    let ep = client(d.path(), "y");
    let conn = ep
        .connect(mesh.local_addr(), "meshgate")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello("y", LINK_PROTOCOL_VERSION))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mesh.linked_peers() != ["y"] {
        assert!(tokio::time::Instant::now() < deadline, "no link with y");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v = mesh.view();
    assert!(v.refused_links >= 4, "{v:?}");
}
