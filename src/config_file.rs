//! The configuration file: TOML, every key optional, laid over a base [`Config`].
//!
//! A server is configured in code (and by its command line); a file lets an operator change the
//! settings of a running server: on SIGHUP an application re-reads it and calls
//! [`crate::Server::reload`]. Unknown keys are errors (a typo must not be silently ignored), and
//! so are wrong types; the error names the file, line and key. `serde` + `toml` do the parsing:
//! a hand-written TOML reader would be more code to get wrong than the whole feature.
//!
//! ```toml
//! log_level = "info"            # read by the application (hioload-echo: reloadable)
//! listen = "127.0.0.1:8080"     # restart needed
//! admin_listen = "127.0.0.1:9100" # the admin listener (/metrics, /debug/probes); "off": none
//! control_on_main = false       # also serve them on the WebSocket listener; restart needed
//! path = "/ws"
//! workers = 4                   # restart needed
//! io_backend = "auto"           # auto | poll | io-uring; restart needed
//! idle_timeout = 60             # seconds; 0 = never ping; reloadable
//! pong_timeout = 30
//! message_timeout = 30          # a started message must be complete within this; reloadable
//! max_connections = 100000      # reloadable
//! memory_budget = "1GiB"        # held input + assembly + pending output, all connections
//! handshake_timeout = 10
//! close_timeout = 5
//! shutdown_grace = 5
//!
//! [limits]                      # reloadable (but inplace_frame_max, max_head_bytes)
//! max_message_size = "16MiB"    # or a plain number of bytes
//! max_frame_size = "16MiB"
//!
//! [backpressure]                # reloadable
//! soft_bytes = "1MiB"
//! hard_bytes = "32MiB"
//! timeout = 10
//!
//! [deflate]                     # permessage-deflate; reloadable (new sessions)
//! mode = "shared"               # off | shared | dedicated | dedicated:9..15 (window bits)
//! threshold = "1KiB"            # shorter messages go out uncompressed
//! level = 6                     # zlib level 0..9
//!
//! [tls]                         # wss://; the files are re-read on every reload (SIGHUP)
//! cert = "/etc/hioload/cert.pem"  # certificate chain (PEM), end-entity first
//! key = "/etc/hioload/key.pem"    # its private key (PEM)
//! listen = "0.0.0.0:8443"       # a second, TLS listener; unset: `listen` speaks TLS; restart needed
//! [[tls.sni]]                   # optional: another certificate for clients that ask for `host`
//! host = "chat.example.com"
//! cert = "/etc/hioload/chat.pem"
//! key = "/etc/hioload/chat.key"
//!
//! [cluster]                     # topics across nodes through Redis; restart to change
//! redis = "redis://127.0.0.1:6379"
//! channel_prefix = "hioload:"   # topic T is channel hioload:T
//! queue = 65536                 # publications waiting to be sent at most (more: dropped, counted)
//! ```
//!
//! Paths are used as written (relative ones from the server's working directory).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Config, ConfigError};

/// A parsed configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    log_level: Option<String>,
    listen: Option<SocketAddr>,
    admin_listen: Option<String>,
    control_on_main: Option<bool>,
    path: Option<String>,
    workers: Option<usize>,
    ring_capacity: Option<usize>,
    batch_size: Option<usize>,
    session_shards: Option<usize>,
    cpu_affinity: Option<bool>,
    io_backend: Option<String>,
    handshake_timeout: Option<f64>,
    close_timeout: Option<f64>,
    shutdown_grace: Option<f64>,
    idle_timeout: Option<f64>,
    pong_timeout: Option<f64>,
    message_timeout: Option<f64>,
    max_connections: Option<usize>,
    memory_budget: Option<Bytes>,
    limits: Option<LimitsFile>,
    backpressure: Option<BackpressureFile>,
    deflate: Option<DeflateFile>,
    tls: Option<TlsFile>,
    cluster: Option<ClusterFile>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    sni: Vec<SniFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SniFile {
    host: String,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    redis: String,
    channel_prefix: Option<String>,
    queue: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeflateFile {
    mode: Option<String>,
    threshold: Option<Bytes>,
    level: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_frame_size: Option<Bytes>,
    max_message_size: Option<Bytes>,
    max_head_bytes: Option<Bytes>,
    max_headers: Option<usize>,
    inplace_frame_max: Option<Bytes>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackpressureFile {
    soft_bytes: Option<Bytes>,
    hard_bytes: Option<Bytes>,
    timeout: Option<f64>,
}

/// A byte count: a number, or a string with a K/KiB, M/MiB or G/GiB suffix (powers of 1024).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Bytes {
    Number(u64),
    Text(String),
}

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigFileError {
    /// It could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// It is not valid TOML, or has an unknown key or a value of the wrong type.
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range.
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Which value, and why.
        error: ConfigError,
    },
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| "configuration".to_string(), |p| p.display().to_string())
        };
        match self {
            ConfigFileError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            ConfigFileError::Parse { path, message } => {
                write!(f, "{}: {}", name(path), message.trim_end())
            }
            ConfigFileError::Invalid { path, error } => write!(f, "{}: {error}", name(path)),
        }
    }
}

impl std::error::Error for ConfigFileError {}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigFileError::Parse { message, .. } => ConfigFileError::Parse {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
        toml::from_str(text).map_err(|e| {
            // One line, for a log line: "line L, column C: what".
            let (at, source) = e.span().map_or((String::new(), String::new()), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = before.len() - line_start + 1;
                let line_text = text[line_start..].lines().next().unwrap_or("").trim();
                (
                    format!("line {line}, column {column}: "),
                    format!(" (in `{line_text}`)"),
                )
            });
            ConfigFileError::Parse {
                path: None,
                message: format!("{at}{}{source}", e.message().trim()),
            }
        })
    }

    /// The `log_level` key (a `tracing` filter such as `info` or `hioload_ws=debug`), if set.
    pub fn log_level(&self) -> Option<&str> {
        self.log_level.as_deref()
    }

    /// `base` with every value this file sets, validated.
    pub fn apply(&self, base: &Config) -> Result<Config, ConfigFileError> {
        let invalid = |field: &'static str, problem: String| ConfigFileError::Invalid {
            path: None,
            error: ConfigError { field, problem },
        };
        let secs = |field: &'static str, v: f64| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| invalid(field, format!("must be a number of seconds >= 0, got {v}")))
        };
        let bytes = |field: &'static str, b: &Bytes| -> Result<usize, ConfigFileError> {
            match b {
                Bytes::Number(n) => {
                    usize::try_from(*n).map_err(|_| invalid(field, format!("{n} is too large")))
                }
                Bytes::Text(t) => parse_bytes(t).map_err(|e| invalid(field, e)),
            }
        };
        let mut c = base.clone();
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.admin_listen {
            c.admin_listen = parse_admin_listen(v).map_err(|e| invalid("admin_listen", e))?;
        }
        if let Some(v) = self.control_on_main {
            c.control_on_main = v;
        }
        if let Some(v) = &self.path {
            c.path = v.clone();
        }
        if let Some(v) = self.workers {
            c.num_workers = v;
        }
        if let Some(v) = self.ring_capacity {
            c.ring_capacity = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.session_shards {
            c.session_shards = v;
        }
        if let Some(v) = self.cpu_affinity {
            c.cpu_affinity = v;
        }
        if let Some(v) = &self.io_backend {
            c.io_backend = v.parse().map_err(|e| invalid("io_backend", e))?;
        }
        if let Some(v) = self.handshake_timeout {
            c.handshake_timeout = secs("handshake_timeout", v)?;
        }
        if let Some(v) = self.close_timeout {
            c.close_timeout = secs("close_timeout", v)?;
        }
        if let Some(v) = self.shutdown_grace {
            c.shutdown_grace = secs("shutdown_grace", v)?;
        }
        if let Some(v) = self.idle_timeout {
            let d = secs("idle_timeout", v)?;
            c.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = self.pong_timeout {
            c.pong_timeout = secs("pong_timeout", v)?;
        }
        if let Some(v) = self.message_timeout {
            c.message_timeout = secs("message_timeout", v)?;
        }
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = &self.memory_budget {
            c.memory_budget = bytes("memory_budget", v)?;
        }
        if let Some(l) = &self.limits {
            if let Some(v) = &l.max_frame_size {
                c.limits.max_frame_size = bytes("limits.max_frame_size", v)?;
            }
            if let Some(v) = &l.max_message_size {
                c.limits.max_message_size = bytes("limits.max_message_size", v)?;
            }
            if let Some(v) = &l.max_head_bytes {
                c.limits.max_head_bytes = bytes("limits.max_head_bytes", v)?;
            }
            if let Some(v) = l.max_headers {
                c.limits.max_headers = v;
            }
            if let Some(v) = &l.inplace_frame_max {
                c.limits.inplace_frame_max = bytes("limits.inplace_frame_max", v)?;
            }
        }
        if let Some(b) = &self.backpressure {
            if let Some(v) = &b.soft_bytes {
                c.backpressure.soft_bytes = bytes("backpressure.soft_bytes", v)?;
            }
            if let Some(v) = &b.hard_bytes {
                c.backpressure.hard_bytes = bytes("backpressure.hard_bytes", v)?;
            }
            if let Some(v) = b.timeout {
                c.backpressure.timeout = secs("backpressure.timeout", v)?;
            }
        }
        if let Some(d) = &self.deflate {
            if let Some(v) = &d.mode {
                c.deflate.mode = v.parse().map_err(|problem| ConfigFileError::Invalid {
                    path: None,
                    error: ConfigError {
                        field: "deflate.mode",
                        problem,
                    },
                })?;
            }
            if let Some(v) = &d.threshold {
                c.deflate.threshold = bytes("deflate.threshold", v)?;
            }
            if let Some(v) = d.level {
                c.deflate.level = v;
            }
        }
        if let Some(t) = &self.tls {
            let base = c.tls.clone();
            let cert = t
                .cert
                .clone()
                .or(base.as_ref().map(|b| b.files.default.cert.clone()));
            let key = t
                .key
                .clone()
                .or(base.as_ref().map(|b| b.files.default.key.clone()));
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err(ConfigFileError::Invalid {
                    path: None,
                    error: ConfigError {
                        field: "tls",
                        problem: "needs both cert and key (PEM file paths)".to_string(),
                    },
                });
            };
            let mut files = crate::config::TlsFiles::new(cert, key);
            files.sni = t
                .sni
                .iter()
                .map(|s| {
                    (
                        s.host.clone(),
                        crate::config::CertFiles {
                            cert: s.cert.clone(),
                            key: s.key.clone(),
                        },
                    )
                })
                .collect();
            c.tls = Some(crate::config::TlsConfig {
                files,
                listen: t.listen.or(base.and_then(|b| b.listen)),
            });
        }
        if let Some(f) = &self.cluster {
            let mut cluster = crate::cluster::ClusterConfig::redis(f.redis.clone());
            if let Some(p) = &f.channel_prefix {
                cluster.channel_prefix = p.clone();
            }
            if let Some(q) = f.queue {
                cluster.queue = q;
            }
            c.cluster = Some(cluster);
        }
        c.validate()
            .map_err(|error| ConfigFileError::Invalid { path: None, error })?;
        Ok(c)
    }

    /// [`load`](Self::load) then [`apply`](Self::apply), errors naming the file.
    pub fn load_over(path: &Path, base: &Config) -> Result<(ConfigFile, Config), ConfigFileError> {
        let file = Self::load(path)?;
        let cfg = file.apply(base).map_err(|e| match e {
            ConfigFileError::Invalid { error, .. } => ConfigFileError::Invalid {
                path: Some(path.to_path_buf()),
                error,
            },
            other => other,
        })?;
        Ok((file, cfg))
    }
}

/// An admin address: `IP:PORT`, or `off` (also `none`, or empty) for no admin listener.
pub fn parse_admin_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is neither IP:PORT nor \"off\""))
}

/// Parses `65536`, `64K`, `64KiB`, `16M`, `16MiB`, `1G`, `1GiB` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 65536, 64KiB, 16MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use K, M or G, powers of 1024)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_laid_over_the_base() {
        let file = ConfigFile::parse(
            "log_level = \"debug\"\nworkers = 2\nidle_timeout = 0\n[limits]\nmax_message_size = \"64KiB\"\n[backpressure]\ntimeout = 2.5\n",
        )
        .unwrap();
        let c = file.apply(&Config::default()).unwrap();
        assert_eq!(file.log_level(), Some("debug"));
        assert_eq!(c.num_workers, 2);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.limits.max_message_size, 64 << 10);
        assert_eq!(
            c.limits.max_frame_size,
            Config::default().limits.max_frame_size
        );
        assert_eq!(c.backpressure.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn the_control_plane_keys_set_the_admin_address_or_turn_it_off() {
        let base = Config {
            admin_listen: Some("127.0.0.1:9464".parse().unwrap()),
            ..Config::default()
        };
        let c = ConfigFile::parse("admin_listen = \"127.0.0.1:9100\"\ncontrol_on_main = true\n")
            .unwrap()
            .apply(&base)
            .unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(c.control_on_main);
        let c = ConfigFile::parse("admin_listen = \"off\"\n")
            .unwrap()
            .apply(&base)
            .unwrap();
        assert_eq!(c.admin_listen, None);
        assert!(!c.control_on_main);
        let e = ConfigFile::parse("admin_listen = \"localhost\"\n")
            .unwrap()
            .apply(&base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin_listen"), "{e}");
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_are_refused_with_their_name() {
        let e = ConfigFile::parse("max_mesage_size = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_mesage_size"), "{e}");
        let e = ConfigFile::parse("workers = \"four\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
        let e = ConfigFile::parse("[limits]\nmax_message_size = 10\n")
            .unwrap()
            .apply(&Config::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_message_size"), "{e}");
        let e = ConfigFile::parse("[limits]\nmax_message_size = \"12 parsecs\"\n")
            .unwrap()
            .apply(&Config::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("parsecs"), "{e}");
    }
}
