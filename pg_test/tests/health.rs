//! A missing launcher is visible (docs/design.md#healing): `orders_sync.health` says
//! `launcher_down` the moment it is gone, a monitoring role can read it, and it says `ok`
//! again once the launcher is back by itself.

use orders_sync_pg_test::postgres::{Client, NoTls};
use orders_sync_pg_test::{connect, dsn, ensure_extension, exclusive, scalar};
use std::time::{Duration, Instant};

fn launcher_state(db: &mut Client) -> (String, Option<i32>, String) {
    let row =
        db.query_one("SELECT state, pid, detail FROM orders_sync.health WHERE component = 'launcher'", &[]).unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn wait_for_state(db: &mut Client, state: &str, timeout: Duration) -> (Duration, Option<i32>, String) {
    let start = Instant::now();
    loop {
        let (now, pid, detail) = launcher_state(db);
        if now == state {
            return (start.elapsed(), pid, detail);
        }
        assert!(
            start.elapsed() < timeout,
            "launcher state still {now:?} ({detail}) after {timeout:?}, expected {state:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_terminated_launcher_shows_as_launcher_down_until_it_is_back() {
    let _guard = exclusive();
    let mut db = connect();
    ensure_extension(&mut db);
    db.batch_execute(
        "DROP ROLE IF EXISTS it_health_watch;
         CREATE ROLE it_health_watch LOGIN IN ROLE orders_sync_monitor;",
    )
    .unwrap();
    // What an alerting query runs: an unprivileged role, no pg_read_all_stats.
    let mut watch =
        Client::connect(&format!("{} user=it_health_watch", dsn()), NoTls).expect("connect as it_health_watch");
    let (_, first, detail) = wait_for_state(&mut watch, "ok", Duration::from_secs(30));
    let first = first.expect("an ok launcher has a pid");
    assert!(detail.starts_with(&format!("launcher pid {first} running since")), "{detail}");
    let components: i64 = scalar(&mut watch, "SELECT count(*) FROM orders_sync.health");
    assert_eq!(components, 1);

    let terminated: bool = scalar(&mut db, &format!("SELECT pg_terminate_backend({first})"));
    assert!(terminated);
    let (seen_down, pid, detail) = wait_for_state(&mut watch, "launcher_down", Duration::from_secs(1));
    assert_eq!(pid, None);
    assert!(detail.contains("comes back 5 s after it exits"), "{detail}");
    let (back, second, _) = wait_for_state(&mut watch, "ok", Duration::from_secs(30));
    assert_ne!(second, Some(first), "a new launcher");
    eprintln!("health: launcher_down seen {seen_down:?} after the terminate, ok again {back:?} later");

    drop(watch);
    db.batch_execute("DROP ROLE it_health_watch").unwrap();
}
