//! The command line: subcommands and their flags, as clap parses them.
//!
//! Setting flags are kept as raw strings; `config` parses them with the same setters as the
//! file and the environment, so a value means the same thing wherever it is given.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sluice: a message broker for AMQP 0-9-1, Kafka and RocketMQ clients, built on one
/// append-only log.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    ///
    /// Locks the data directory (one sluice process per directory) and listens for AMQP
    /// and Kafka clients. Settings are layered: built-in defaults, then the --config file,
    /// then SLUICE_* environment variables, then these flags; config/sluice.toml in the
    /// source tree lists every setting with its default.
    Serve(ServeArgs),

    /// Load generators that drive any broker (Sluice or a peer) and report throughput,
    /// latency, message loss and broker CPU.
    Bench(sluice_bench::cli::BenchArgs),

    /// Administer a running server through its admin HTTP API (`http.listen`): list
    /// objects as tables (or JSON), manage queues, users, permissions and definitions,
    /// create RocketMQ topics and groups. A change exits 0 once the object is usable.
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server's admin API.
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    pub server: String,
    /// A broker user (basic auth); guest works from loopback only.
    #[arg(long, default_value = "guest")]
    pub user: String,
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// PEM file of the CA that signed an https server's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub object: AdminObject,
}

#[derive(Debug, Subcommand)]
pub enum AdminObject {
    /// RocketMQ topics (streams of the engine, also Kafka topics).
    #[command(subcommand)]
    Topic(TopicCommand),
    /// RocketMQ consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List objects: queues, exchanges, bindings, vhosts, users, permissions,
    /// connections, channels, consumers (AMQP); topics, kafka-groups,
    /// rocketmq-subscriptions (the engine).
    List {
        #[arg(value_enum)]
        what: Listable,
        /// Only this virtual host (AMQP objects).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// One Kafka consumer group: members, committed offsets and lag per partition.
    KafkaGroup { name: String },
    /// AMQP queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Broker users (for every protocol's login).
    #[command(subcommand)]
    User(UserCommand),
    /// A user's permissions in a virtual host.
    #[command(subcommand)]
    Permission(PermissionCommand),
    /// Durable definitions in RabbitMQ's format.
    #[command(subcommand)]
    Definitions(DefinitionsCommand),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Listable {
    Queues,
    Exchanges,
    Bindings,
    Vhosts,
    Users,
    Permissions,
    Connections,
    Channels,
    Consumers,
    Topics,
    KafkaGroups,
    RocketmqSubscriptions,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Declare a queue (nothing changes if an equal one exists).
    Declare {
        name: String,
        #[arg(long)]
        durable: bool,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Delete a queue and its messages.
    Delete {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Drop a queue's ready messages.
    Purge {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create or change a user.
    Add {
        name: String,
        #[arg(long)]
        password: String,
        /// Comma-separated: administrator, monitoring, policymaker, management.
        #[arg(long, default_value = "")]
        tags: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PermissionCommand {
    /// Set a user's configure / write / read patterns in a vhost.
    Set {
        user: String,
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    Delete {
        user: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DefinitionsCommand {
    /// Write every durable definition to FILE (`-` for stdout).
    Export { file: String },
    /// Create what FILE defines (a RabbitMQ or Sluice export).
    Import { file: String },
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (nothing changes if it exists).
    Create {
        name: String,
        /// Message queues (partitions).
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// normal, fifo, delay, transaction or mixed (any case).
        #[arg(long, default_value = "mixed")]
        message_type: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create or reconfigure a consumer group.
    Create {
        name: String,
        /// Deliver each message group in order, one message at a time.
        #[arg(long)]
        fifo: bool,
        /// Retries before a message goes to the dead-letter topic `%DLQ%<group>`.
        #[arg(long)]
        retry_max_times: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file to read settings from (unknown keys are an error).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for stored data and the lock file; created if missing
    /// [default: ./sluice-data] [env: SLUICE_DATA_DIR] [file key: data_dir]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,

    /// Address for AMQP 0-9-1 clients, an IP address and a port (0 picks a free port)
    /// [default: 127.0.0.1:5672] [env: SLUICE_AMQP_LISTEN] [file key: amqp.listen]
    #[arg(long, value_name = "IP:PORT")]
    pub amqp_listen: Option<String>,

    /// Address for Kafka clients, an IP address and a port (0 picks a free port)
    /// [default: 127.0.0.1:9092] [env: SLUICE_KAFKA_LISTEN] [file key: kafka.listen]
    #[arg(long, value_name = "IP:PORT")]
    pub kafka_listen: Option<String>,

    /// Address for RocketMQ 5 clients (gRPC), an IP address and a port (0 picks a free
    /// port) [default: 127.0.0.1:8081] [env: SLUICE_ROCKETMQ_LISTEN] [file key:
    /// rocketmq.listen]
    #[arg(long, value_name = "IP:PORT")]
    pub grpc_listen: Option<String>,

    /// Address of the admin HTTP API (`sluice admin` talks to it), an IP address and a
    /// port (0 picks a free port) [default: 127.0.0.1:15672] [env: SLUICE_HTTP_LISTEN]
    /// [file key: http.listen]
    #[arg(long, value_name = "IP:PORT")]
    pub http_listen: Option<String>,
}

impl ServeArgs {
    /// The value given on the command line for the setting with this file key, if any.
    pub fn setting(&self, key: &str) -> Option<String> {
        match key {
            "data_dir" => self.data_dir.clone(),
            "amqp.listen" => self.amqp_listen.clone(),
            "kafka.listen" => self.kafka_listen.clone(),
            "rocketmq.listen" => self.grpc_listen.clone(),
            "http.listen" => self.http_listen.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::{Config, SETTINGS};
    use clap::CommandFactory;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["sluice", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn every_setting_flag_reaches_its_setting() {
        for setting in SETTINGS {
            let Some(flag) = setting.flag else { continue };
            let args = serve_args(&[flag, "value"]);
            assert_eq!(
                args.setting(setting.key).as_deref(),
                Some("value"),
                "{flag}"
            );
        }
    }

    #[test]
    fn serve_has_no_setting_flag_missing_from_the_settings_table() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["config", "help"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            assert!(
                SETTINGS.iter().any(|s| s.flag == Some(flag.as_str())),
                "{flag} is not in config::SETTINGS"
            );
        }
    }

    #[test]
    fn flag_help_names_the_env_var_file_key_and_default() {
        let defaults = Config::default();
        let default_of = |key: &str| match key {
            "data_dir" => defaults.data_dir.display().to_string(),
            "amqp.listen" => defaults
                .amqp_listen
                .map_or_else(|| "none".into(), |a| a.to_string()),
            "kafka.listen" => defaults.kafka_listen.to_string(),
            "rocketmq.listen" => defaults.rocketmq_listen.to_string(),
            "http.listen" => defaults.http_listen.to_string(),
            other => panic!("no default listed for {other}"),
        };
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for setting in SETTINGS {
            let Some(flag) = setting.flag else { continue };
            let arg = serve
                .get_arguments()
                .find(|a| a.get_long().map(|l| format!("--{l}")).as_deref() == Some(flag))
                .unwrap();
            let help = arg.get_help().unwrap().to_string();
            assert!(help.contains(setting.env), "{flag}: {help}");
            assert!(
                help.contains(&format!("file key: {}", setting.key)),
                "{flag}: {help}"
            );
            assert!(
                help.contains(&format!("default: {}", default_of(setting.key))),
                "{flag}: {help}"
            );
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
