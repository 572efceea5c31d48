//! Positional mixing: a talker's direction and distance, through the real mixer, give the
//! interaural level difference and gain the model documents (`callsign_mesh::spatial`):
//! equal-power pan at `PAN_SPREAD · sin(azimuth)`, 3 dB quieter straight behind, distance gain
//! from the channel's falloff. Out of reach or in another context a proximity talker is silent.

use callsign_keys::Identity;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::spatial::{
    ContextId, Falloff, Placement, Point, Position, ProximityGate, Spatial, SpatialMode,
};
use callsign_node::audio::mixer::{MixInput, Mixer, SourceMix};
use callsign_node::audio::synth::Tone;
use rand::SeedableRng;

const N: usize = 960;
const CH: ChannelId = ChannelId(7);

fn world() -> ContextId {
    ContextId::of("arma/altis/server-3")
}

fn listener() -> Position {
    Position::facing_forward(world(), [10.0, 2.0, -4.0])
}

/// A talker `distance` metres away at `degrees` (0 ahead, 90 right) on the horizontal plane.
fn talker(distance: f32, degrees: f32) -> Point {
    let l = listener();
    let a = degrees.to_radians();
    Point {
        context: world(),
        at: [
            l.at[0] + distance * a.sin(),
            l.at[1],
            l.at[2] + distance * a.cos(),
        ],
    }
}

fn db(x: f32) -> f32 {
    20.0 * x.log10()
}

/// (left dB, right dB) of a 0 dBFS-RMS-referenced tone mixed with this placement, relative to
/// the same tone mixed centred and unplaced (each ear at -3 dB).
fn ears(placement: Placement) -> (f32, f32) {
    let mut samples = vec![0.0; N];
    Tone::new(440.0, 0.25).fill(&mut samples);
    let mix = |source_mix: Option<SourceMix>| {
        let mut mixer = Mixer::new();
        if let Some(m) = source_mix {
            mixer.set_source(1, m);
        }
        let mut out = vec![0.0; 2 * N];
        mixer
            .mix(
                &[MixInput {
                    channel: CH,
                    source: 1,
                    samples: &samples,
                }],
                &mut out,
            )
            .unwrap();
        let rms = |side: usize| {
            let s: f32 = out.iter().skip(side).step_by(2).map(|x| x * x).sum();
            (s / N as f32).sqrt()
        };
        (rms(0), rms(1))
    };
    let (ref_l, _) = mix(None);
    // Centre is -3 dB per ear: measure against the tone at full scale in one ear.
    let full = ref_l * std::f32::consts::SQRT_2;
    let source = match placement {
        Placement::Unplaced => None,
        Placement::Silent => Some(SourceMix {
            gain: 0.0,
            pan: None,
        }),
        Placement::Placed { gain, pan } => Some(SourceMix {
            gain,
            pan: Some(pan),
        }),
    };
    let (l, r) = mix(source);
    (db(l.max(1e-9) / full), db(r.max(1e-9) / full))
}

/// Power gain (dB) summed over both ears, and ILD (right minus left, dB).
fn gain_and_ild(placement: Placement) -> (f32, f32) {
    let (l, r) = ears(placement);
    let power = 10.0 * (10f32.powf(l / 10.0) + 10f32.powf(r / 10.0)).log10();
    (power, r - l)
}

fn positional(falloff: Falloff, full_cm: u32) -> Spatial {
    Spatial {
        mode: SpatialMode::Positional,
        range_cm: 4000,
        full_cm,
        falloff,
    }
}

fn close(what: &str, got: f32, want: f32) {
    eprintln!("{what}: {got:.2} dB (want {want:.2})");
    assert!(
        (got - want).abs() <= 1.0,
        "{what}: {got:.2} dB, expected {want:.2} dB (±1 dB)"
    );
}

#[test]
fn direction_sets_the_interaural_level_difference() {
    let s = positional(Falloff::Linear, 1000);
    let l = listener();
    // Equal-power pan p = 0.8 sin(az): ILD = 20 log10 tan((p + 1) π / 4).
    let side_ild = db(((1.8f32) * std::f32::consts::PI / 4.0).tan());
    assert!((side_ild - 16.0).abs() < 0.1);
    let cases = [
        ("ahead", 0.0, 0.0, 0.0),
        ("90° right", 90.0, 0.0, side_ild),
        ("90° left", -90.0, 0.0, -side_ild),
        ("behind", 180.0, -3.0, 0.0),
        (
            "45° right",
            45.0,
            0.0,
            db(((1.0 + 0.8 * std::f32::consts::FRAC_1_SQRT_2) * std::f32::consts::PI / 4.0).tan()),
        ),
    ];
    for (name, degrees, want_gain, want_ild) in cases {
        let placement = s.place(Some(&l), Some(&talker(5.0, degrees)));
        let (gain, ild) = gain_and_ild(placement);
        close(&format!("{name} gain"), gain, want_gain);
        close(&format!("{name} ILD"), ild, want_ild);
    }
}

#[test]
fn distance_sets_the_gain() {
    let l = listener();
    // Linear from full volume at 0 m to silence at 40 m: half the range is half the amplitude.
    let linear = positional(Falloff::Linear, 0);
    let (g, ild) = gain_and_ild(linear.place(Some(&l), Some(&talker(20.0, 0.0))));
    close("linear, 0.5× range", g, -6.02);
    close("linear, 0.5× range ILD", ild, 0.0);
    let (g, _) = gain_and_ild(linear.place(Some(&l), Some(&talker(40.0, 0.0))));
    assert!(g < -60.0, "linear at the range is silent, got {g:.1} dB");
    // Inverse distance, full volume within 2 m: -6 dB per doubling.
    let inverse = positional(Falloff::Inverse, 200);
    let (g, _) = gain_and_ild(inverse.place(Some(&l), Some(&talker(20.0, 0.0))));
    close("inverse, 0.5× range", g, db(2.0 / 20.0));
    let (g, _) = gain_and_ild(inverse.place(Some(&l), Some(&talker(40.0, 0.0))));
    close("inverse, 1× range", g, db(2.0 / 40.0));
    // Past the range a positional talker stays at the edge gain.
    let (g, _) = gain_and_ild(inverse.place(Some(&l), Some(&talker(400.0, 0.0))));
    close("inverse, 10× range", g, db(2.0 / 40.0));
    // Height counts in the distance.
    let above = Point {
        at: [l.at[0], l.at[1] + 20.0, l.at[2]],
        ..talker(0.0, 0.0)
    };
    let (g, _) = gain_and_ild(linear.place(Some(&l), Some(&above)));
    close("linear, 20 m above", g, -6.02);
}

#[test]
fn another_context_or_out_of_reach_is_silent_on_proximity() {
    let l = listener();
    let proximity = Spatial {
        mode: SpatialMode::Proximity,
        ..positional(Falloff::Inverse, 100)
    };
    let elsewhere = Point {
        context: ContextId::of("arma/stratis/server-3"),
        ..talker(3.0, 0.0)
    };
    assert_eq!(
        proximity.place(Some(&l), Some(&elsewhere)),
        Placement::Silent
    );
    assert_eq!(
        proximity.place(None, Some(&talker(3.0, 0.0))),
        Placement::Silent
    );
    assert_eq!(proximity.place(Some(&l), None), Placement::Silent);
    let (g, _) = gain_and_ild(Placement::Silent);
    assert!(g < -100.0);
    // A positional channel plays another context's talker unplaced, as a plain channel.
    let positional = positional(Falloff::Inverse, 100);
    assert_eq!(
        positional.place(Some(&l), Some(&elsewhere)),
        Placement::Unplaced
    );
    let (g, ild) = gain_and_ild(Placement::Unplaced);
    close("unplaced gain", g, 0.0);
    close("unplaced ILD", ild, 0.0);

    // Reach with hysteresis: in at the range (40 m), out only past range + band (2 m).
    let who = Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(9)).public();
    let mut gate = ProximityGate::new();
    let d = |p: Point| l.point().distance(&p);
    let walk = [
        (45.0, false),
        (40.5, false),
        (39.5, true),
        (41.5, true),
        (42.5, false),
        (41.5, false),
        (30.0, true),
    ];
    for (metres, heard) in walk {
        assert_eq!(
            gate.admit(who, CH, &proximity, d(talker(metres, 30.0))),
            heard,
            "at {metres} m"
        );
    }
    assert!(!gate.admit(who, CH, &proximity, d(elsewhere)));
}
