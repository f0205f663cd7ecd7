//! The `bench` subcommand of the `sluice` binary: flags, output files and exit codes.
//!
//! Exit codes: 0 when every expected message arrived exactly once and nothing failed;
//! 3 when the run finished but found missing, duplicated or malformed messages or errors
//! (the report is still written); 1 when the run could not happen or the report could not
//! be written; 2 for a usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::amqp;
use crate::report::Report;

const EXIT_FAILED: u8 = 1;
const EXIT_CHECK_FAILED: u8 = 3;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum Target {
    /// Drive any AMQP 0-9-1 broker (Sluice, RabbitMQ, LavinMQ, ...) and report throughput,
    /// publish→deliver latency, lost and duplicated messages, and broker CPU per message.
    ///
    /// The run declares its own uniquely named queues (and exchange), connects every
    /// consumer and producer, publishes stamped messages for --duration or --count, waits
    /// up to --drain for the rest to arrive, then deletes what it declared. Messages that
    /// the broker confirmed (or, without --confirm, that were sent) must each arrive once
    /// per queue they were routed to; anything else is reported.
    ///
    /// Exit status: 0 clean; 3 finished but messages were missing, duplicated or malformed,
    /// or errors occurred; 1 could not run; 2 usage error.
    Amqp(AmqpArgs),

    /// Drive any Kafka-protocol broker (Sluice, Apache Kafka, Redpanda, tansu, ...) through
    /// librdkafka: produce throughput then consume throughput of a fresh topic
    /// (--mode throughput), or publish→deliver latency at a fixed rate (--mode latency),
    /// with the broker's CPU per MB when --broker-pid is given. The topic is deleted at
    /// the end.
    ///
    /// Exit status: 0 clean; 3 finished but acknowledged records were not read back, or
    /// errors occurred; 1 could not run; 2 usage error.
    Kafka(KafkaArgs),

    /// Drive any RocketMQ 5 gRPC endpoint (Sluice, an Apache or rocketmq-rust proxy):
    /// send throughput of NORMAL messages to an existing topic, then receive+ack
    /// throughput in a fresh consumer group, with the broker's CPU per MB when
    /// --broker-pid is given.
    ///
    /// Exit status: 0 clean; 3 finished but sent messages were missing or duplicated, or
    /// errors occurred; 1 could not run; 2 usage error.
    Rocketmq(RocketmqArgs),
}

#[derive(Debug, Args)]
pub struct RocketmqArgs {
    #[command(flatten)]
    pub options: crate::rocketmq::Options,

    /// Write the report as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub options: crate::kafka::Options,

    /// Write the report as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AmqpArgs {
    #[command(flatten)]
    pub options: amqp::Options,

    /// Write the full report as JSON, with a per-second throughput series
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw throughput over time and the latency percentile curve as SVG
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Runs `sluice bench ...` to completion.
pub fn main(args: BenchArgs) -> ExitCode {
    match args.target {
        Target::Amqp(args) => amqp_main(&args),
        Target::Kafka(args) => kafka_main(&args),
        Target::Rocketmq(args) => rocketmq_main(&args),
    }
}

/// The load generators' runtime; a failure is reported and becomes the exit code.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("sluice: bench: starting the async runtime: {error}");
            ExitCode::from(EXIT_FAILED)
        })
}

fn rocketmq_main(args: &RocketmqArgs) -> ExitCode {
    report_main(
        crate::rocketmq::run(&args.options),
        args.json.as_deref(),
        |r: &crate::rocketmq::Report| (r.summary(), r.is_clean()),
    )
}

fn kafka_main(args: &KafkaArgs) -> ExitCode {
    report_main(
        crate::kafka::run(&args.options),
        args.json.as_deref(),
        |r: &crate::kafka::Report| (r.summary(), r.is_clean()),
    )
}

/// Runs a load generator, prints its summary, writes its JSON report if asked, and
/// turns its outcome into the exit code.
fn report_main<R: serde::Serialize, E: std::fmt::Display>(
    run: impl std::future::Future<Output = Result<R, E>>,
    json: Option<&Path>,
    outcome: impl FnOnce(&R) -> (String, bool),
) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let report = match runtime.block_on(run) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("sluice: bench: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let (summary, clean) = outcome(&report);
    print!("{summary}");
    if let Some(path) = json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("encoding the JSON report: {e}"))
            .and_then(|json| write(path, &(json + "\n")));
        if let Err(message) = written {
            eprintln!("sluice: bench: {message}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    }
}

fn amqp_main(args: &AmqpArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let interrupt = async {
        // Without a signal handler, stop only when the run ends by itself.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = match runtime.block_on(amqp::run_until(&args.options, interrupt)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("sluice: bench: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    print!("{}", report.summary());
    if let Err(message) = write_outputs(args, &report) {
        eprintln!("sluice: bench: {message}");
        return ExitCode::from(EXIT_FAILED);
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    }
}

fn write_outputs(args: &AmqpArgs, report: &Report) -> Result<(), String> {
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(report)
            .map_err(|e| format!("encoding the JSON report: {e}"))?;
        write(path, &(json + "\n"))?;
    }
    if let Some(path) = &args.plot {
        write(path, &crate::plot::svg(report))?;
    }
    Ok(())
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))
}
