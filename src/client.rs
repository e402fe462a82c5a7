//! `meshgate pub` and `meshgate sub`: small MQTT 3.1.1 clients for trying a node out.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Where and how to connect.
#[derive(Args)]
pub struct ConnArgs {
    /// MQTT address of the node.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    addr: String,
    /// QoS (0 or 1).
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// User name.
    #[arg(short, long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    password: Option<String>,
}

/// `meshgate pub`
#[derive(Args)]
pub struct PubArgs {
    /// Topic to publish to, e.g. `orders/17/us/ny`.
    topic: String,
    /// Payload; omit with --lines to read stdin.
    message: Option<String>,
    /// Publish each line of stdin as one message.
    #[arg(short, long)]
    lines: bool,
    /// Ask the node to retain the message.
    #[arg(short, long)]
    retain: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// `meshgate sub`
#[derive(Args)]
pub struct SubArgs {
    /// Filters: native (`orders/*/us/>`) or MQTT (`orders/+/us/#`).
    #[arg(required = true)]
    filters: Vec<String>,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    count: Option<u64>,
    #[command(flatten)]
    conn: ConnArgs,
}

fn options(c: &ConnArgs, prefix: &str) -> anyhow::Result<MqttOptions> {
    let (host, port) = c
        .addr
        .rsplit_once(':')
        .context("--addr must be HOST:PORT")?;
    let port: u16 = port.parse().context("--addr has an invalid port")?;
    let id = format!("{prefix}-{:08x}", rand_u32());
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let Some(u) = &c.username {
        o.set_credentials(u, c.password.clone().unwrap_or_default());
    }
    Ok(o)
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Translates native wildcards for MQTT: `*` → `+`, `>` → `#` (`#` also matches the parent,
/// which is the closest MQTT offers).
fn to_mqtt_filter(f: &str) -> String {
    f.split('/')
        .map(|l| match l {
            "*" => "+",
            ">" => "#",
            l => l,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn publish(a: PubArgs) -> anyhow::Result<()> {
    let messages: Vec<String> = if a.lines {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()?
    } else {
        match a.message {
            Some(m) => vec![m],
            None => bail!("give a message, or --lines to publish stdin line by line"),
        }
    };
    runtime()?.block_on(async move {
        let (client, mut ev) = AsyncClient::new(options(&a.conn, "meshgate-pub")?, 1024);
        let q = qos(a.conn.qos);
        let n = messages.len();
        let topic = a.topic.clone();
        let retain = a.retain;
        let sender = client.clone();
        tokio::spawn(async move {
            for m in messages {
                if sender.publish(&topic, q, retain, m).await.is_err() {
                    break;
                }
            }
        });
        // Disconnect only once everything left (QoS 0) or was acknowledged (QoS 1).
        let (mut sent, mut acked, mut closing) = (0, 0, n == 0);
        if closing {
            client.disconnect().await?;
        }
        loop {
            match ev.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => sent += 1,
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => bail!("connection to {} failed: {e}", a.conn.addr),
            }
            let done = if q == QoS::AtLeastOnce {
                acked >= n
            } else {
                sent >= n
            };
            if done && !closing {
                closing = true;
                client.disconnect().await?;
            }
        }
        if q == QoS::AtLeastOnce && acked < n {
            bail!("{acked} of {n} messages acknowledged");
        }
        Ok(())
    })
}

pub fn subscribe(a: SubArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let (client, mut ev) = AsyncClient::new(options(&a.conn, "meshgate-sub")?, 1024);
        for f in &a.filters {
            client.subscribe(to_mqtt_filter(f), qos(a.conn.qos)).await?;
        }
        let mut seen = 0u64;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    println!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                    seen += 1;
                    if a.count.is_some_and(|c| seen >= c) {
                        let _ = client.disconnect().await;
                        return Ok(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        bail!("the node refused a filter");
                    }
                }
                Ok(_) => {}
                Err(e) => bail!("connection to {} failed: {e}", a.conn.addr),
            }
        }
    })
}
