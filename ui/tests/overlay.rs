//! The in-game overlay: its contents (kittest, AccessKit labels), and the app showing it when
//! its key is pressed, with who talks where, and hiding it again.

mod common;

use callsign_ui::radio::overlay::{overlay_contents, OverlayView, OVERLAY_TITLE};
use callsign_ui::Profile;
use common::*;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

#[test]
fn the_overlay_says_who_transmits_talks_and_holds_the_floor() {
    let view = OverlayView {
        transmitting: vec!["/flight".into()],
        talkers: vec![("Goose".into(), "/command".into())],
        floors: vec![("/command".into(), "Goose has the floor".into())],
    };
    let h = Harness::new_ui(|ui| overlay_contents(ui, &view));
    assert!(h.query_by_label("TX /flight").is_some());
    assert!(h.query_by_label("▶ Goose on /command").is_some());
    assert!(h.query_by_label("/command: Goose has the floor").is_some());
    assert!(h.query_by_label("Callsign: quiet").is_none());
    let quiet = OverlayView::default();
    let h = Harness::new_ui(|ui| overlay_contents(ui, &quiet));
    assert!(h.query_by_label("Callsign: quiet").is_some());
}

#[test]
fn its_key_shows_the_overlay_with_the_talkers_and_hides_it() {
    let Opened {
        dir,
        ops,
        ends,
        mut h,
    } = open_saved();
    h.step();
    assert!(h.query_by_label(OVERLAY_TITLE).is_none());
    goose_talks(&ends, ops);
    // F10 (the default key) shows it; the app embeds it where it cannot open a window.
    h.key_press(eframe::egui::Key::F10);
    step_until(&mut h, |h| h.query_by_label("▶ Goose on /ops").is_some());
    assert!(h.query_by_label(OVERLAY_TITLE).is_some());
    // Remembered in the profile once written.
    step_until(&mut h, |_| {
        Profile::load(dir.path())
            .ok()
            .flatten()
            .is_some_and(|p| p.overlay.shown)
    });
    h.key_press(eframe::egui::Key::F10);
    step_until(&mut h, |h| h.query_by_label("▶ Goose on /ops").is_none());
}
