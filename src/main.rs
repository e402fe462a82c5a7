//! `meshgate`: the event-mesh gateway's single binary.
//!
//! `meshgate run` starts a node; `pub` and `sub` are small MQTT clients; `config check`
//! validates a configuration file.

mod catalog_cli;
mod chargeback_cli;
mod client;
mod demo;
mod http_client;
mod kafka_cli;
mod spec_cli;

/// mimalloc instead of glibc's malloc: events are allocated on one thread and freed on another
/// (publisher and subscriber tasks), where glibc spends a quarter of a mesh node's CPU. Built
/// with `no_thp`: mimalloc otherwise asks for transparent huge pages, and the kernel zeroed a
/// fresh 2 MiB page for each region touched (8 % of the node's CPU taking MQTT publishes into a
/// Kafka sink; 3.6-4.2 -> 3.1-3.7 us of node CPU per record without them).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use meshgate_node::{Config, LogFormat, Node, Overrides};
use tracing_subscriber::EnvFilter;

/// An event-mesh gateway: MQTT 3.1.1/5 and HTTP clients publish and subscribe on one wildcard
/// topic tree (`orders/*/us/>`).
///
/// Start a node with `meshgate run` (MQTT on 127.0.0.1:1883, HTTP on 127.0.0.1:8080), then try
/// `meshgate sub 'demo/>'` in one terminal and `meshgate pub demo/hello world` in another.
#[derive(Parser)]
#[command(name = "meshgate", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: MQTT on 127.0.0.1:1883, HTTP on 127.0.0.1:8080.
    Run(RunArgs),
    /// Publish one message (or each line of stdin with --lines) over MQTT.
    Pub(client::PubArgs),
    /// Subscribe over MQTT and print each message as `topic payload`.
    Sub(client::SubArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Start a three-node mesh (one core, two edges) in this process on loopback, with
    /// generated certificates, and print how to try it.
    Demo(demo::DemoArgs),
    /// Certificates of the mesh: a CA, then one certificate per node.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Kafka bridge tools.
    #[command(subcommand)]
    Kafka(KafkaCommand),
    /// AsyncAPI specs (the governance catalog) tools.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Every app's metered traffic (produced, delivered, per mesh link) from running nodes.
    Chargeback(chargeback_cli::ChargebackArgs),
    /// The governance catalog of a running node.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Hash a secret read from stdin for the configuration: an MQTT password
    /// (`password_hash`, argon2id) or with --token a REST bearer token (`token_sha256`).
    Passwd {
        /// Hash a bearer token (SHA-256) instead of a password.
        #[arg(long)]
        token: bool,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Print an AsyncAPI document of the whole mesh (or one app) as it is now.
    Export(catalog_cli::ExportArgs),
}

#[derive(Subcommand)]
enum SpecCommand {
    /// Validate a specs directory: every problem with file and line, non-zero exit if any.
    Validate(spec_cli::ValidateArgs),
    /// Show what `spec apply` would change on a Kafka cluster: topics to create, partition
    /// counts to raise, configs to set, shrinks refused (text, or JSON with --json).
    Plan(spec_cli::ClusterArgs),
    /// Create and grow the Kafka topics the specs declare and set their configs; never
    /// shrinks or deletes. Non-zero exit if a change was refused or failed.
    Apply(spec_cli::ClusterArgs),
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// Republish a time or offset range of a Kafka topic into the mesh, filtered by a
    /// wildcard, through a running node that has the cluster.
    Replay(kafka_cli::ReplayArgs),
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create the mesh CA: DIR/ca.pem and DIR/ca.key (keep ca.key safe; nodes do not need it).
    Init {
        /// Directory for the files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Create DIR/NAME.pem and DIR/NAME.key for node NAME, signed by the CA in DIR.
    Issue {
        /// Directory holding the CA.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node's name (as given to `meshgate run --name`).
        #[arg(long, value_name = "NAME")]
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate a configuration file; print the effective configuration (as JSON,
    /// passwords, tokens and URL passwords redacted).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML configuration file (every key is documented in config/meshgate.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node name, unique in the mesh.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// MQTT listener address.
    #[arg(long, value_name = "HOST:PORT")]
    mqtt: Option<SocketAddr>,
    /// HTTP API address.
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<SocketAddr>,
    /// Mesh (QUIC, UDP) address.
    #[arg(long, value_name = "HOST:PORT")]
    mesh: Option<SocketAddr>,
    /// Dial this node (repeatable).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// Directory for durable state.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Directory holding ca.pem, <name>.pem and <name>.key.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Pub(args) => client::publish(args),
        Command::Sub(args) => client::subscribe(args),
        Command::Config(ConfigCommand::Check { file }) => check(file),
        Command::Demo(args) => demo::run(args),
        Command::Kafka(KafkaCommand::Replay(args)) => kafka_cli::replay(args),
        Command::Spec(SpecCommand::Validate(args)) => spec_cli::validate(args),
        Command::Spec(SpecCommand::Plan(args)) => spec_cli::plan(args),
        Command::Spec(SpecCommand::Apply(args)) => spec_cli::apply(args),
        Command::Chargeback(args) => chargeback_cli::chargeback(args),
        Command::Catalog(CatalogCommand::Export(args)) => catalog_cli::export(args),
        Command::Passwd { token } => passwd(token),
        Command::Cert(CertCommand::Init { dir }) => meshgate_tls::init_ca(&dir)
            .map(|p| println!("created {}", p.display()))
            .map_err(Into::into),
        Command::Cert(CertCommand::Issue { dir, name }) => meshgate_tls::issue(&dir, &name)
            .map(|p| println!("created {}", p.display()))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the configuration line for the secret on stdin (one line; the newline is not part
/// of it).
fn passwd(token: bool) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the secret from stdin")?;
    let secret = line.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        anyhow::bail!("no secret on stdin: echo -n 'the secret' | meshgate passwd");
    }
    if token {
        println!(
            "token_sha256 = \"{}\"",
            meshgate_auth::token_digest(secret.as_bytes())
        );
    } else {
        println!(
            "password_hash = \"{}\"",
            meshgate_auth::hash_password(secret.as_bytes())
        );
    }
    Ok(())
}

fn check(file: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(Some(&file), &Overrides::default())
        .with_context(|| format!("{} is not valid", file.display()))?;
    println!(
        "# {} is valid; effective configuration (secrets redacted):",
        file.display()
    );
    let mut v = serde_json::to_value(&config).context("cannot render the configuration")?;
    redact(&mut v);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Replaces secrets in a rendered configuration: values of keys that name a password, token or
/// secret (hashes and digests stay: they are what the file should hold), and the password in a
/// URL's user info (`amqp://user:pass@host`).
fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = ["password", "token", "secret"]
                    .iter()
                    .any(|s| k.contains(s))
                    && !k.ends_with("_hash")
                    && !k.ends_with("_sha256");
                match val {
                    serde_json::Value::String(s) if secret => *s = "<redacted>".into(),
                    serde_json::Value::String(s) => {
                        if let Some(url) = redact_url(s) {
                            *s = url;
                        }
                    }
                    other => redact(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `scheme://user:password@rest` with the password replaced, if `s` has one.
fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    let (user, _) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:<redacted>@{host}"))
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        name: args.name,
        mqtt: args.mqtt,
        http: args.http,
        mesh: args.mesh,
        peers: args.peers,
        data_dir: args.data_dir,
        tls_dir: args.tls_dir,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    init_logging(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshgate")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let node = Node::start(config).await?;
        let mesh = match (node.mesh_addr(), node.mesh()) {
            (Some(a), Some(m)) => format!(" and mesh on {a} (incarnation {})", m.incarnation()),
            _ => String::new(),
        };
        eprintln!(
            "meshgate {} serving MQTT on {} and HTTP on {}{mesh} (Ctrl-C to stop)",
            env!("CARGO_PKG_VERSION"),
            node.mqtt_addr(),
            node.http_addr()
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
