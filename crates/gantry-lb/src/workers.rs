//! Listeners are served per core, as nginx's workers serve them: one thread per core, each
//! with its own single-threaded runtime, its own socket on every listener address
//! (SO_REUSEPORT, so the kernel spreads connections over them) and its own idle connections to
//! the targets (`upstream`). A request then stays on the thread that accepted it: no hop
//! between threads, no shared pool lock.

use std::net::SocketAddr;

pub type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Which worker this thread is (None: not a worker).
    pub(crate) static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The calling thread's worker number, if it is a worker.
pub fn current() -> Option<usize> {
    WORKER.with(|w| w.get())
}

/// How many workers `Workers::start` makes: one per core.
pub fn count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub struct Workers {
    jobs: Vec<tokio::sync::mpsc::UnboundedSender<Job>>,
}

impl Workers {
    /// One worker per core. They end when this is dropped (their tasks with them).
    pub fn start() -> std::io::Result<Workers> {
        let n = count();
        let mut jobs = vec![];
        for i in 0..n {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new()
                .name(format!("gantry-lb-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(i)));
                    rt.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    })
                })?;
            jobs.push(tx);
        }
        Ok(Workers { jobs })
    }

    pub fn count(&self) -> usize {
        self.jobs.len()
    }

    /// Runs `job` on worker `i` (inside its runtime, so it may spawn there).
    pub fn run(&self, i: usize, job: Job) {
        let _ = self.jobs[i].send(job);
    }
}

/// A listening socket that shares its address with the other workers' (SO_REUSEPORT).
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
