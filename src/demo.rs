//! `meshgate demo`: a three-node mesh (one core, two edges) in one process on loopback, with
//! certificates generated on the spot, so that a newcomer sees wildcard routing across nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use meshgate_mesh::Role;
use meshgate_node::{Config, Node};

/// Options of `meshgate demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// First MQTT port: the core gets it, the edges the next two (0: any free ports).
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// First HTTP port.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// First mesh (UDP) port.
    #[arg(long, default_value_t = 7400)]
    mesh_port: u16,
    /// Directory for the generated certificates (default: a fresh temporary directory, removed
    /// at exit).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

const NAMES: [&str; 3] = ["core", "edge-1", "edge-2"];

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (dir, temporary) = match args.dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("meshgate-demo-{}", std::process::id())),
            true,
        ),
    };
    if !dir.join("ca.pem").exists() {
        meshgate_tls::init_ca(&dir)?;
    }
    for n in NAMES {
        if !dir.join(format!("{n}.pem")).exists() {
            meshgate_tls::issue(&dir, n)?;
        }
    }
    // Port 0 gives every node an ephemeral port; otherwise ports count up from the given one.
    let addr = |port: u16, i: usize| -> SocketAddr {
        let p = if port == 0 { 0 } else { port + i as u16 };
        ([127, 0, 0, 1], p).into()
    };
    let config = |i: usize, core: Option<SocketAddr>| {
        let mut c = Config::default();
        c.node.name = NAMES[i].to_string();
        c.mqtt.listen = addr(args.mqtt_port, i);
        c.http.listen = addr(args.http_port, i);
        c.mesh.listen = addr(args.mesh_port, i);
        c.mesh.tls_dir = Some(dir.clone());
        c.node.data_dir = dir.join(format!("data-{}", NAMES[i]));
        c.mesh.role = if i == 0 { Role::Core } else { Role::Edge };
        c.mesh.peers = core.iter().map(ToString::to_string).collect();
        c.mesh.gossip_interval_secs = 0.5;
        c
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        let mut nodes: Vec<Node> = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let core = nodes.first().and_then(Node::mesh_addr);
            nodes.push(
                Node::start(config(i, core))
                    .await
                    .with_context(|| format!("cannot start node {name}"))?,
            );
        }
        // Wait until the three nodes see each other, so the instructions work at once.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let all = nodes
                .iter()
                .all(|n| n.mesh().is_some_and(|m| m.view().nodes.len() == 3));
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("meshgate demo: three nodes on loopback, linked over QUIC with mutual TLS");
        println!("(certificates in {})\n", dir.display());
        println!("  node     role   MQTT              HTTP                    mesh (UDP)");
        for (i, n) in nodes.iter().enumerate() {
            println!(
                "  {:<8} {:<6} {:<17} http://{:<16} {}",
                NAMES[i],
                if i == 0 { "core" } else { "edge" },
                n.mqtt_addr(),
                n.http_addr(),
                n.mesh_addr().map(|a| a.to_string()).unwrap_or_default()
            );
        }
        let (m1, m2) = (nodes[1].mqtt_addr(), nodes[2].mqtt_addr());
        let h0 = nodes[0].http_addr();
        println!("\nBoth edges dial the core. Try, in another terminal:\n");
        println!("  meshgate sub --addr {m2} 'orders/+/us/#'          # a subscriber on edge-2");
        println!("  meshgate pub --addr {m1} orders/17/us/ny hello    # a publisher on edge-1");
        println!("  curl -s http://{h0}/v1/mesh                 # links, counters, registry");
        println!("\nThe event travels edge-1 -> core -> edge-2 once, whatever the number of");
        println!("subscribers on edge-2, and only because edge-2 has a matching subscription.");
        println!(
            "Any MQTT client works too, e.g. mosquitto_sub -p {} -t 'orders/#'.",
            m2.port()
        );
        println!("\nCtrl-C stops the demo.");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        crate::wait_for_signal().await;
        for n in nodes {
            n.shutdown().await;
        }
        anyhow::Ok(())
    });
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
