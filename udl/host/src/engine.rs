//! The execution engine: worker threads that run UDL invocations off the delivery path.
//!
//! Every worker has its own queue. Where a job goes is what its statefulness asks for:
//! - `stateful`: the worker picked by the hash of its key, so one key's invocations run
//!   in delivery order, one at a time;
//! - `singlethreaded`: the worker picked by the hash of its vertex and UDL, so all of
//!   them run in order on one thread;
//! - `stateless`: the least loaded worker.
//!
//! Each queue holds at most `queue_capacity` jobs (a semaphore's permits, released when
//! the job is done). [`Engine::try_submit`] never waits: a full queue hands the job back
//! ([`Full`]), and the caller decides, per its configuration, to refuse the write with a
//! clear error or to hold the writer's acknowledgement and [`Engine::submit`] (which waits
//! asynchronously for room). The delivery path itself never blocks on a UDL.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The most worker threads an engine runs.
pub const WORKERS_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Per-key order.
    Stateful,
    /// Any worker.
    Stateless,
    /// One thread for the vertex's UDL.
    SingleThreaded,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub workers: usize,
    /// Jobs queued or running per worker.
    pub queue_capacity: usize,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("workers must be between 1 and {WORKERS_MAX}, not {0}")]
    Workers(usize),
    #[error("queue_capacity must be at least 1")]
    QueueCapacity,
    #[error("starting a worker thread: {0}")]
    Thread(String),
    #[error("registering metrics: {0}")]
    Metrics(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// A job handed back because its queue is full.
#[derive(Debug)]
pub struct Full(pub Job);

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the queue of UDL {} at {} is full",
            self.0.udl, self.0.vertex
        )
    }
}

/// What a job reports when it ends: `Err` with the failure's message.
pub type Outcome = Result<(), String>;

/// One invocation to run.
pub struct Job {
    /// For placement and metrics.
    pub vertex: String,
    pub udl: String,
    pub placement: Placement,
    /// The object's key (per-key order of stateful UDLs).
    pub key: String,
    /// Runs the invocation on the worker; given the worker's id.
    pub run: Box<dyn FnOnce(u32) -> Outcome + Send>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("vertex", &self.vertex)
            .field("udl", &self.udl)
            .field("placement", &self.placement)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Per-UDL metrics, labelled by `udl` (its UUID) and `vertex` (the pathname).
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    pub invocations: IntCounterVec,
    pub errors: IntCounterVec,
    pub queued: IntGaugeVec,
    pub latency_seconds: HistogramVec,
}

impl EngineMetrics {
    pub fn new(registry: &Registry) -> Result<Self, EngineError> {
        let labels = ["udl", "vertex"];
        let m = EngineMetrics {
            invocations: IntCounterVec::new(
                Opts::new("squall_udl_invocations_total", "UDL invocations run"),
                &labels,
            )
            .map_err(|e| EngineError::Metrics(e.to_string()))?,
            errors: IntCounterVec::new(
                Opts::new(
                    "squall_udl_errors_total",
                    "UDL invocations that failed or panicked",
                ),
                &labels,
            )
            .map_err(|e| EngineError::Metrics(e.to_string()))?,
            queued: IntGaugeVec::new(
                Opts::new(
                    "squall_udl_queue_depth",
                    "UDL invocations queued or running",
                ),
                &labels,
            )
            .map_err(|e| EngineError::Metrics(e.to_string()))?,
            latency_seconds: HistogramVec::new(
                HistogramOpts::new("squall_udl_latency_seconds", "UDL invocation run time")
                    .buckets(
                        prometheus::exponential_buckets(10e-6, 4.0, 10)
                            .map_err(|e| EngineError::Metrics(e.to_string()))?,
                    ),
                &labels,
            )
            .map_err(|e| EngineError::Metrics(e.to_string()))?,
        };
        for c in [
            Box::new(m.invocations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.errors.clone()),
            Box::new(m.queued.clone()),
            Box::new(m.latency_seconds.clone()),
        ] {
            registry
                .register(c)
                .map_err(|e| EngineError::Metrics(e.to_string()))?;
        }
        Ok(m)
    }
}

struct Queued {
    job: Job,
    _permit: OwnedSemaphorePermit,
}

struct Worker {
    jobs: std_mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
}

/// Worker threads with bounded queues. Dropping the engine lets the workers finish
/// what is queued and stop.
pub struct Engine {
    workers: Vec<Worker>,
    queue_capacity: usize,
    metrics: EngineMetrics,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

impl Engine {
    pub fn start(config: &EngineConfig, metrics: EngineMetrics) -> Result<Engine, EngineError> {
        if config.workers == 0 || config.workers > WORKERS_MAX {
            return Err(EngineError::Workers(config.workers));
        }
        if config.queue_capacity == 0 {
            return Err(EngineError::QueueCapacity);
        }
        let mut workers = Vec::with_capacity(config.workers);
        let mut threads = Vec::with_capacity(config.workers);
        for id in 0..config.workers {
            let (tx, rx) = std_mpsc::channel::<Queued>();
            let metrics = metrics.clone();
            let thread = std::thread::Builder::new()
                .name(format!("squall-udl-{id}"))
                .spawn(move || {
                    for Queued { job, _permit } in rx {
                        let labels = [job.udl.as_str(), job.vertex.as_str()];
                        let started = Instant::now();
                        let outcome = (job.run)(id as u32);
                        metrics
                            .latency_seconds
                            .with_label_values(&labels)
                            .observe(started.elapsed().as_secs_f64());
                        metrics.invocations.with_label_values(&labels).inc();
                        metrics.queued.with_label_values(&labels).dec();
                        if let Err(message) = outcome {
                            metrics.errors.with_label_values(&labels).inc();
                            tracing::warn!(udl = %job.udl, vertex = %job.vertex, key = %job.key, %message, "a UDL invocation failed");
                        }
                    }
                })
                .map_err(|e| EngineError::Thread(e.to_string()))?;
            threads.push(thread);
            workers.push(Worker {
                jobs: tx,
                room: Arc::new(Semaphore::new(config.queue_capacity)),
            });
        }
        Ok(Engine {
            workers,
            queue_capacity: config.queue_capacity,
            metrics,
            threads,
        })
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// The worker a job must run on.
    fn place(&self, job: &Job) -> usize {
        let n = self.workers.len();
        match job.placement {
            Placement::Stateful => (hash_of(&[&job.key]) % n as u64) as usize,
            Placement::SingleThreaded => (hash_of(&[&job.vertex, &job.udl]) % n as u64) as usize,
            Placement::Stateless => (0..n)
                .max_by_key(|w| self.workers[*w].room.available_permits())
                .unwrap_or(0),
        }
    }

    fn enqueue(&self, worker: usize, job: Job, permit: OwnedSemaphorePermit) -> Result<(), Job> {
        self.metrics
            .queued
            .with_label_values(&[job.udl.as_str(), job.vertex.as_str()])
            .inc();
        self.workers[worker]
            .jobs
            .send(Queued {
                job,
                _permit: permit,
            })
            .map_err(|e| e.0.job)
    }

    /// Queues `job` if its worker has room; hands it back otherwise.
    pub fn try_submit(&self, job: Job) -> Result<(), Full> {
        let worker = self.place(&job);
        match Arc::clone(&self.workers[worker].room).try_acquire_owned() {
            Ok(permit) => self.enqueue(worker, job, permit).map_err(Full),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => Err(Full(job)),
        }
    }

    /// Queues `job`, waiting (asynchronously) for room in its worker's queue.
    pub async fn submit(&self, job: Job) -> Result<(), EngineError> {
        let worker = self.place(&job);
        let permit = Arc::clone(&self.workers[worker].room)
            .acquire_owned()
            .await
            .map_err(|_| EngineError::Stopped)?;
        self.enqueue(worker, job, permit)
            .map_err(|_| EngineError::Stopped)
    }

    /// Jobs queued or running, over all workers.
    pub fn in_flight(&self) -> usize {
        self.workers
            .iter()
            .map(|w| self.queue_capacity - w.room.available_permits())
            .sum()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queues ends each worker after what it has queued.
        self.workers.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn engine(workers: usize, queue_capacity: usize) -> (Engine, Registry) {
        let registry = Registry::new();
        let metrics = EngineMetrics::new(&registry).expect("metrics");
        let engine = Engine::start(
            &EngineConfig {
                workers,
                queue_capacity,
            },
            metrics,
        )
        .expect("an engine");
        (engine, registry)
    }

    fn job(
        key: &str,
        placement: Placement,
        run: impl FnOnce(u32) -> Outcome + Send + 'static,
    ) -> Job {
        Job {
            vertex: "/in/".to_string(),
            udl: "u".to_string(),
            placement,
            key: key.to_string(),
            run: Box::new(run),
        }
    }

    #[test]
    fn stateful_jobs_of_one_key_run_in_order_on_one_worker() {
        let (engine, _) = engine(4, 10_000);
        let seen: Arc<Mutex<Vec<(String, usize, u32)>>> = Arc::default();
        for i in 0..400 {
            let key = format!("k{}", i % 5);
            let seen = Arc::clone(&seen);
            let k = key.clone();
            engine
                .try_submit(job(&key, Placement::Stateful, move |worker| {
                    seen.lock().expect("lock").push((k, i, worker));
                    Ok(())
                }))
                .expect("room");
        }
        drop(engine);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 400);
        for k in 0..5 {
            let of_key: Vec<&(String, usize, u32)> = seen
                .iter()
                .filter(|(key, ..)| *key == format!("k{k}"))
                .collect();
            assert!(of_key.windows(2).all(|w| w[0].1 < w[1].1), "order of k{k}");
            assert!(
                of_key.iter().all(|e| e.2 == of_key[0].2),
                "one worker for k{k}"
            );
        }
    }

    #[test]
    fn a_full_queue_hands_the_job_back_and_submit_waits_for_room() {
        let (engine, _) = engine(1, 2);
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("lock");
        for _ in 0..2 {
            let gate = Arc::clone(&gate);
            engine
                .try_submit(job("k", Placement::Stateful, move |_| {
                    drop(gate.lock());
                    Ok(())
                }))
                .expect("room for two");
        }
        let Err(Full(back)) = engine.try_submit(job("k", Placement::Stateful, |_| Ok(()))) else {
            panic!("a third job must not fit");
        };
        assert_eq!(back.key, "k");
        assert_eq!(engine.in_flight(), 2);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        runtime.block_on(async {
            let waiting = engine.submit(job("k", Placement::Stateful, move |_| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }));
            tokio::pin!(waiting);
            // No room yet: the submit waits.
            assert!(
                tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                    .await
                    .is_err()
            );
            drop(held);
            waiting.await.expect("queued once there is room");
        });
        drop(engine);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn errors_and_invocations_are_counted_per_udl() {
        let (engine, registry) = engine(2, 100);
        for i in 0..10 {
            engine
                .try_submit(job("k", Placement::Stateless, move |_| {
                    if i % 3 == 0 {
                        Err("nope".to_string())
                    } else {
                        Ok(())
                    }
                }))
                .expect("room");
        }
        drop(engine);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(
            text.contains(r#"squall_udl_invocations_total{udl="u",vertex="/in/"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"squall_udl_errors_total{udl="u",vertex="/in/"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"squall_udl_queue_depth{udl="u",vertex="/in/"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"squall_udl_latency_seconds_count{udl="u",vertex="/in/"} 10"#),
            "{text}"
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let registry = Registry::new();
        let metrics = EngineMetrics::new(&registry).expect("metrics");
        for (workers, queue_capacity, want) in [
            (0, 1, EngineError::Workers(0)),
            (WORKERS_MAX + 1, 1, EngineError::Workers(WORKERS_MAX + 1)),
            (1, 0, EngineError::QueueCapacity),
        ] {
            let e = Engine::start(
                &EngineConfig {
                    workers,
                    queue_capacity,
                },
                metrics.clone(),
            )
            .expect_err("refused");
            assert_eq!(e, want);
        }
    }
}
