fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let r = squall_platform::sim::run_seed(seed);
    println!(
        "seed {seed}: events {} deliveries {} result {:?}",
        r.history.events.len(),
        r.history.deliveries(),
        r.result
    );
    for view in r.history.views().values().filter(|v| v.is_restart()) {
        println!(
            "restart view {} members {:?} failed {:?}",
            view.id, view.members, view.failed
        );
    }
    println!("restart counts: {:?}", r.restart);
    if std::env::var("DUMP").is_ok() {
        for e in &r.history.events {
            println!("{e:?}");
        }
    }
}
