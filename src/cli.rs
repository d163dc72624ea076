//! Command line: `vip-operator run | crd | simulator`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::simulator::{SimCredential, Simulator, SimulatorConfig};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "vip-operator",
    version,
    about = "Binds Huawei Cloud ECS virtual IPs to server NICs as Kubernetes VipBinding objects"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level (`info`) or tracing directives (`info,vip_operator=debug`). RUST_LOG overrides it.
    #[arg(long, global = true, env = "VIPOP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[arg(
        long,
        global = true,
        env = "VIPOP_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the bundled ECS simulator (a stand-in for Huawei Cloud, for demos and tests).
    Simulator(SimulatorArgs),
}

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to listen on. The admin API (/sim/...) is unauthenticated: keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Access key the simulator accepts.
    #[arg(
        long,
        env = "VIPOP_SIM_ACCESS_KEY",
        default_value = "SIMULATORACCESSKEY01"
    )]
    pub access_key: String,
    /// Secret key for --access-key.
    #[arg(
        long,
        env = "VIPOP_SIM_SECRET_KEY",
        hide_env_values = true,
        default_value = "simulator-secret-key"
    )]
    pub secret_key: String,
    /// Latency added to every cloud call (after its effect is applied).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Calls per second above which the gateway answers 429 APIGW.0308 (unlimited by default).
    #[arg(long)]
    pub qps: Option<f64>,
    /// A NIC id that does not exist (answers 404); repeatable.
    #[arg(long = "missing-nic")]
    pub missing_nics: Vec<String>,
}

impl SimulatorArgs {
    pub fn config(&self) -> SimulatorConfig {
        let mut config = SimulatorConfig::new(self.listen, &self.access_key, &self.secret_key);
        config.credentials = vec![SimCredential {
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            security_token: None,
        }];
        config.latency = Duration::from_millis(self.latency_ms);
        config.qps = self.qps;
        config.missing_nics = self.missing_nics.clone();
        config
    }

    pub async fn run(self) -> Result<(), String> {
        let sim = Simulator::start(self.config()).await?;
        tracing::info!(endpoint = %sim.url(), access_key = %self.access_key, "ECS simulator listening; admin API under /sim/");
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            on_signal.cancel();
        });
        sim.run_until(stop).await;
        Ok(())
    }
}
