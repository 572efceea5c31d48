//! The delay follows tokio's clock inside a runtime (virtual when paused) and the wall clock
//! outside one.

use std::time::{Duration, Instant};

use futures_timer::Delay;

#[tokio::test(start_paused = true)]
async fn inside_a_paused_runtime_a_delay_takes_virtual_time_only() {
    let wall = Instant::now();
    let virtual_start = tokio::time::Instant::now();
    Delay::new(Duration::from_secs(3600)).await;
    assert_eq!(
        tokio::time::Instant::now() - virtual_start,
        Duration::from_secs(3600)
    );
    assert!(wall.elapsed() < Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn reset_moves_the_deadline_either_way() {
    let start = tokio::time::Instant::now();
    let mut delay = Delay::new(Duration::from_secs(10));
    (&mut delay).await;
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(10));
    // A fired delay fires again after a reset.
    delay.reset(Duration::from_secs(5));
    (&mut delay).await;
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(15));
    // A reset to an earlier deadline is honoured.
    let mut delay = Delay::new(Duration::from_secs(100));
    delay.reset(Duration::from_secs(1));
    delay.await;
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(16));
}

#[test]
fn outside_a_runtime_a_delay_sleeps_on_the_wall_clock() {
    let start = Instant::now();
    futures::executor::block_on(Delay::new(Duration::from_millis(50)));
    assert!(start.elapsed() >= Duration::from_millis(50));

    let mut delay = Delay::new(Duration::from_secs(3600));
    delay.reset(Duration::from_millis(20));
    let start = Instant::now();
    futures::executor::block_on(&mut delay);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(20), "{took:?}");
    assert!(took < Duration::from_secs(3600));
}
