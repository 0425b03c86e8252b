//! The `portcullis-gateway` command line.
//!
//! Every subcommand opens the database named by the configuration
//! directly, so they all work while `serve` runs (SQLite in WAL mode, or
//! PostgreSQL shared by several replicas).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::server::Services;

/// Portcullis gateway: an identity-aware edge compatible with Cloudflare
/// Access. It logs people in (OIDC providers, local users) and issues Access
/// JWTs for them and for service tokens,
/// evaluates per-application policies, publishes its signing keys at
/// `/cdn-cgi/access/certs` and proxies to origins.
#[derive(Debug, Parser)]
#[command(name = "portcullis-gateway", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The configuration file option shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// The TOML configuration file. Secrets may come from the environment:
    /// PORTCULLIS_ADMIN_TOKEN, PORTCULLIS_MASTER_KEY, PORTCULLIS_STORAGE_URL.
    #[arg(long, short = 'c', value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: public listener, admin listener, key rotation.
    Serve(ConfigArg),
    /// Validate the configuration; exits non-zero naming each bad key.
    Check(ConfigArg),
    /// Applications and their AUD tags.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Service tokens for bots and scripts.
    #[command(subcommand, name = "service-token")]
    ServiceToken(ServiceTokenCommand),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read a password from stdin (one line) and print its argon2id PHC
    /// string, for `password_hash` in a users file.
    #[command(name = "hash-password")]
    HashPassword,
    /// Start a demo with no set-up on 127.0.0.1: the gateway on SQLite in
    /// DIR, a local user with a generated password, and a "whoami" origin
    /// at whoami.localhost:PORT. A second run reuses DIR.
    Quickstart {
        /// Where the database, keys and the generated user live.
        #[arg(long, value_name = "DIR", default_value = "portcullis-data")]
        data_dir: PathBuf,
        /// Port of the gateway on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

/// `apps …`.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Each app's name, domain and AUD tag (tags are generated once and stored).
    List {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// Print `[{"name","domain","aud"}]`.
        #[arg(long)]
        json: bool,
    },
}

/// `service-token …`.
#[derive(Debug, Subcommand)]
pub enum ServiceTokenCommand {
    /// Create a token; prints client_id and client_secret once.
    Create {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// The token's name (what `service_token` selectors match).
        #[arg(long)]
        name: String,
        /// Lifetime (default: service_tokens.default_duration, 8760h).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Print `{"name","client_id","client_secret","expires_at"}`.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never secrets).
    List {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give a token a new secret; the old one works for the grace period.
    Rotate {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// The token's name.
        #[arg(long)]
        name: String,
        /// How long the old secret keeps working (default: service_tokens.rotation_grace, 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// The token's name.
        #[arg(long)]
        name: String,
    },
}

/// `keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys and their state.
    List {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the next signing key. It is published now and signs after
    /// keys.publish_ahead, unless --immediate.
    Rotate {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArg,
        /// Sign with the new key at once (after a compromise).
        #[arg(long)]
        immediate: bool,
    },
}

fn load(arg: &ConfigArg) -> Result<Config, String> {
    Config::load(&arg.config).map_err(|e| {
        let mut out = format!("{}: invalid configuration:", arg.config.display());
        for issue in &e.0 {
            out.push_str(&format!("\n  - {issue}"));
        }
        out
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the command line; the binary's `main` calls this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::HashPassword = &cli.command {
        return hash_password_from_stdin();
    }
    if let Command::Check(arg) = &cli.command {
        return match load(arg) {
            Ok(config) => {
                println!(
                    "{}: ok ({} apps, storage {})",
                    arg.config.display(),
                    config.apps.len(),
                    crate::config::redact_url(&config.storage.url)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password_from_stdin() -> ExitCode {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        eprint!("Password (echoed; end with Enter): ");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("error: the password is empty");
        return ExitCode::from(2);
    }
    match crate::users::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,portcullis_gateway=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(command: Command) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    match command {
        Command::Check(_) | Command::HashPassword => Ok(()),
        Command::Quickstart { data_dir, port } => {
            init_stderr_logging();
            crate::quickstart::run(crate::quickstart::QuickstartOptions { data_dir, port }).await
        }
        Command::Serve(arg) => {
            let config = load(&arg)?;
            init_logging(config.server.log_format);
            let running = crate::server::start(config).await.map_err(|e| s(&e))?;
            running.run_until(crate::server::shutdown_signal()).await;
            Ok(())
        }
        Command::Apps(AppsCommand::List { config, json }) => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            let list: Vec<serde_json::Value> = services
                .apps
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "name": a.config.name,
                        "domain": format!("{}{}", a.config.host, a.config.path_prefix),
                        "aud": a.aud,
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::Value::from(list));
            } else {
                for a in &list {
                    println!(
                        "{}\t{}\t{}",
                        a["name"].as_str().unwrap_or(""),
                        a["domain"].as_str().unwrap_or(""),
                        a["aud"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Command::ServiceToken(cmd) => service_token(cmd).await,
        Command::Keys(KeysCommand::List { config, json }) => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            let keys = services.keys.list().await.map_err(|e| s(&e))?;
            if json {
                println!("{}", serde_json::to_string(&keys).map_err(|e| s(&e))?);
            } else {
                for k in keys {
                    println!(
                        "{}\t{}\t{}\tactivates {}",
                        k.generation,
                        k.kid,
                        k.state,
                        crate::service_tokens::rfc3339(k.activates_at)
                    );
                }
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { config, immediate }) => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            services.keys.start().await.map_err(|e| s(&e))?;
            let info = services.keys.rotate(immediate).await.map_err(|e| s(&e))?;
            println!(
                "new key {} (generation {}) published; signs from {}",
                info.kid,
                info.generation,
                crate::service_tokens::rfc3339(info.activates_at)
            );
            Ok(())
        }
    }
}

async fn service_token(cmd: ServiceTokenCommand) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let print_creds = |c: &crate::service_tokens::IssuedCredentials, json: bool| {
        if json {
            println!("{}", serde_json::to_string(c).unwrap_or_default());
        } else {
            println!("name: {}", c.name);
            println!("client_id: {}", c.client_id);
            println!("client_secret: {}", c.client_secret);
            println!("expires_at: {}", c.expires_at);
            println!("(the secret is shown only now; store it safely)");
        }
    };
    match cmd {
        ServiceTokenCommand::Create {
            config,
            name,
            duration,
            json,
        } => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            let created = services
                .tokens
                .create(&name, duration)
                .await
                .map_err(|e| s(&e))?;
            print_creds(&created, json);
        }
        ServiceTokenCommand::List { config, json } => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            let list = services.tokens.list().await.map_err(|e| s(&e))?;
            if json {
                println!("{}", serde_json::to_string(&list).map_err(|e| s(&e))?);
            } else {
                for t in list {
                    println!(
                        "{}\t{}\t{}\texpires {}\tlast used {}",
                        t.name,
                        t.client_id,
                        t.status,
                        t.expires_at,
                        t.last_used_at.as_deref().unwrap_or("never")
                    );
                }
            }
        }
        ServiceTokenCommand::Rotate {
            config,
            name,
            grace,
            json,
        } => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            let rotated = services
                .tokens
                .rotate(&name, grace)
                .await
                .map_err(|e| s(&e))?;
            print_creds(&rotated, json);
        }
        ServiceTokenCommand::Revoke { config, name } => {
            let services = Services::open(load(&config)?).await.map_err(|e| s(&e))?;
            let client_id = services.tokens.revoke(&name).await.map_err(|e| s(&e))?;
            println!("revoked {name} ({client_id})");
        }
    }
    Ok(())
}
