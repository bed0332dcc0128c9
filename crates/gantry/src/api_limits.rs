//! What one client may hold of the API (`gantry dev` and `gantry server` alike): the
//! front door's connection bounds, each access key's request rate, and the service quotas.

use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct ApiLimitArgs {
    /// Seconds a client may take to send a request head (and wait idle on a kept-alive
    /// connection before one); a connection that sends nothing is closed after as long.
    #[arg(long, env = "GANTRY_API_HEADER_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub api_header_timeout: u64,
    /// Connections one source address may hold open to the API at once.
    #[arg(long, env = "GANTRY_API_CONNECTIONS_PER_SOURCE", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub api_connections_per_source: u64,
    /// API requests per second one access key may make, after a burst of twice as many
    /// (ThrottlingException beyond); 0: unlimited.
    #[arg(long, env = "GANTRY_API_REQUEST_RATE", default_value_t = 200)]
    pub api_request_rate: u32,
    /// Tasks an account may launch per second (RunTask, StartTask, services), after a burst
    /// of five times as many (Fargate's 20 and 100); 0: unlimited.
    #[arg(long, env = "GANTRY_TASK_LAUNCH_RATE", default_value_t = 20)]
    pub task_launch_rate: u32,
    /// Services one cluster may hold (INACTIVE ones not counted).
    #[arg(long, env = "GANTRY_SERVICES_PER_CLUSTER", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub services_per_cluster: u64,
    /// The largest desiredCount of one service.
    #[arg(long, env = "GANTRY_TASKS_PER_SERVICE", default_value_t = 5000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub tasks_per_service: i64,
}

impl ApiLimitArgs {
    pub fn quotas(&self) -> gantry_control::quotas::Quotas {
        let per_second = f64::from(self.task_launch_rate);
        let rate = (per_second > 0.0).then_some(gantry_control::quotas::Rate {
            per_second,
            burst: 5.0 * per_second,
        });
        gantry_control::quotas::Quotas {
            launches: gantry_control::quotas::TokenBuckets::new(rate),
            services_per_cluster: self.services_per_cluster as usize,
            tasks_per_service: self.tasks_per_service,
        }
    }

    pub fn request_rate(&self) -> Option<gantry_control::quotas::Rate> {
        let per_second = f64::from(self.api_request_rate);
        (per_second > 0.0).then_some(gantry_control::quotas::Rate {
            per_second,
            burst: 2.0 * per_second,
        })
    }

    pub fn front(&self) -> gantry_aws::front::FrontLimits {
        gantry_aws::front::FrontLimits {
            header_timeout: Duration::from_secs(self.api_header_timeout),
            per_source: self.api_connections_per_source as usize,
            ..Default::default()
        }
    }
}
