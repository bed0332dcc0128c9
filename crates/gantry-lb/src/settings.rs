//! A listener's load balancer attributes, parsed once per configuration reload (not per
//! request).

use gantry_control::elb::ListenerView;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Xff {
    Append,
    Preserve,
    Remove,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub idle_timeout: Duration,
    pub client_keep_alive: Duration,
    pub http2: bool,
    pub xff: Xff,
    pub xff_client_port: bool,
    pub preserve_host: bool,
    pub drop_invalid_headers: bool,
}

impl Settings {
    pub fn of(v: &ListenerView) -> Settings {
        let on = |k: &str| v.lb_attribute(k) == "true";
        let secs = |k: &str, default: u64| Duration::from_secs(v.lb_attribute(k).parse().unwrap_or(default));
        Settings {
            idle_timeout: secs("idle_timeout.timeout_seconds", 60),
            client_keep_alive: secs("client_keep_alive.seconds", 3600),
            http2: v.lb_attribute("routing.http2.enabled") != "false",
            xff: match v.lb_attribute("routing.http.xff_header_processing.mode").as_str() {
                "preserve" => Xff::Preserve,
                "remove" => Xff::Remove,
                _ => Xff::Append,
            },
            xff_client_port: on("routing.http.xff_client_port.enabled"),
            preserve_host: on("routing.http.preserve_host_header.enabled"),
            drop_invalid_headers: on("routing.http.drop_invalid_header_fields.enabled"),
        }
    }
}

/// A listener as served: its configuration and its parsed settings.
pub struct Served {
    pub view: ListenerView,
    /// The load balancer's request counts.
    pub counters: std::sync::Arc<crate::traffic::Counters>,
    pub settings: Settings,
    /// HTTPS and TLS listeners: how connections are decrypted.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Served {
    pub fn new(view: ListenerView, counters: std::sync::Arc<crate::traffic::Counters>) -> Served {
        let settings = Settings::of(&view);
        Served {
            counters,
            tls: crate::tls::server_config(&view, settings.http2).map(tokio_rustls::TlsAcceptor::from),
            settings,
            view,
        }
    }

    /// Whether clients speak TLS to it (even when its certificate cannot be loaded: then
    /// handshakes fail rather than plain text being served on a TLS port).
    pub fn is_secure(&self) -> bool {
        matches!(self.view.listener.protocol.as_str(), "HTTPS" | "TLS")
    }
}
