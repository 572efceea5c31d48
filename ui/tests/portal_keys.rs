//! Wayland push-to-talk through the XDG GlobalShortcuts portal, on a private D-Bus session bus
//! (a real `dbus-daemon`). No desktop runs here to provide the real portal, so the test serves
//! the portal's documented D-Bus interface itself (CreateSession, BindShortcuts with their
//! Request responses, the Activated / Deactivated signals) and checks what the app asks of it
//! and what it makes of its signals. First, with no portal on the bus and no X display, the
//! app says so clearly.

#![cfg(target_os = "linux")]

mod common;
use callsign_mesh::charter::ChannelId;
use callsign_node::NodeCommand;
use callsign_ui::global_keys::GlobalKeys;
use common::next_command;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

const DESKTOP: &str = "/org/freedesktop/portal/desktop";

/// The shortcuts the app bound: (id, description, preferred trigger).
type Bound = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

struct Portal {
    bound: Bound,
    session: Arc<Mutex<Option<OwnedObjectPath>>>,
}

/// Where a request or session of `sender` lives (the portal spec's handle scheme).
fn handle(kind: &str, sender: &str, token: &str) -> OwnedObjectPath {
    let sender = sender.trim_start_matches(':').replace('.', "_");
    ObjectPath::try_from(format!("{DESKTOP}/{kind}/{sender}/{token}"))
        .unwrap()
        .into()
}

fn token(options: &HashMap<String, OwnedValue>, key: &str) -> String {
    options
        .get(key)
        .and_then(|v| v.downcast_ref::<&str>().ok().map(str::to_string))
        .unwrap()
}

/// Answers a request the way portals do: a `Response` signal on the request's path, a moment
/// after the method returned.
fn respond(
    connection: zbus::Connection,
    sender: String,
    request: OwnedObjectPath,
    results: HashMap<String, OwnedValue>,
) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        connection
            .emit_signal(
                Some(sender.as_str()),
                request.as_ref(),
                "org.freedesktop.portal.Request",
                "Response",
                &(0u32, results),
            )
            .await
            .unwrap();
    });
}

#[zbus::interface(name = "org.freedesktop.portal.GlobalShortcuts")]
impl Portal {
    #[zbus(property, name = "version")]
    fn version(&self) -> u32 {
        1
    }

    async fn create_session(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
        options: HashMap<String, OwnedValue>,
    ) -> OwnedObjectPath {
        let sender = header.sender().unwrap().to_string();
        let request = handle("request", &sender, &token(&options, "handle_token"));
        let session = handle("session", &sender, &token(&options, "session_handle_token"));
        *self.session.lock().unwrap() = Some(session.clone());
        let results = HashMap::from([(
            "session_handle".to_string(),
            OwnedValue::try_from(Value::from(session.as_str())).unwrap(),
        )]);
        respond(connection.clone(), sender, request.clone(), results);
        request
    }

    async fn bind_shortcuts(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
        _session: ObjectPath<'_>,
        shortcuts: Vec<(String, HashMap<String, OwnedValue>)>,
        _parent_window: String,
        options: HashMap<String, OwnedValue>,
    ) -> OwnedObjectPath {
        let sender = header.sender().unwrap().to_string();
        let request = handle("request", &sender, &token(&options, "handle_token"));
        let mut bound = self.bound.lock().unwrap();
        bound.clear();
        let mut assigned = Vec::new();
        for (id, info) in shortcuts {
            let text = |key: &str| {
                info.get(key)
                    .and_then(|v| v.downcast_ref::<&str>().ok().map(str::to_string))
            };
            let preferred = text("preferred_trigger");
            let description = text("description").unwrap_or_default();
            // The desktop gives each shortcut the key it asked for, spelt its own way.
            let given = format!("Press {}", preferred.clone().unwrap_or("nothing".into()));
            let mut info: HashMap<String, OwnedValue> = HashMap::new();
            info.insert(
                "description".into(),
                OwnedValue::try_from(Value::from(description.clone())).unwrap(),
            );
            info.insert(
                "trigger_description".into(),
                OwnedValue::try_from(Value::from(given)).unwrap(),
            );
            assigned.push((id.clone(), info));
            bound.push((id, description, preferred));
        }
        let results = HashMap::from([(
            "shortcuts".to_string(),
            OwnedValue::try_from(Value::from(assigned)).unwrap(),
        )]);
        respond(connection.clone(), sender, request.clone(), results);
        request
    }

    #[zbus(signal)]
    async fn activated(
        emitter: &SignalEmitter<'_>,
        session: ObjectPath<'_>,
        id: &str,
        timestamp: u64,
        options: HashMap<String, Value<'_>>,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn deactivated(
        emitter: &SignalEmitter<'_>,
        session: ObjectPath<'_>,
        id: &str,
        timestamp: u64,
        options: HashMap<String, Value<'_>>,
    ) -> zbus::Result<()>;
}

/// A private session bus; killed when dropped.
struct Bus {
    daemon: Child,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn session_bus() -> Bus {
    let mut daemon = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon (scripts/setup installs dbus)");
    let mut address = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    Bus {
        daemon,
        address: address.trim().to_string(),
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wayland_push_to_talk_goes_through_the_global_shortcuts_portal() {
    let bus = session_bus();
    // This test binary runs this one test, so nothing else reads the environment meanwhile.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    std::env::set_var("WAYLAND_DISPLAY", "wayland-callsign-test");
    std::env::remove_var("DISPLAY");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();

    // No portal on the bus, no X display: refused, saying why.
    let Err(reason) = GlobalKeys::start(tx.clone(), None) else {
        panic!("global keys without a portal or a display");
    };
    assert!(reason.contains("portal"), "{reason}");

    // The desktop's portal appears.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bound: Bound = Arc::default();
    let session = Arc::new(Mutex::new(None));
    let portal = Portal {
        bound: bound.clone(),
        session: session.clone(),
    };
    let address = bus.address.clone();
    let connection = runtime.block_on(async {
        zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .name("org.freedesktop.portal.Desktop")
            .unwrap()
            .serve_at(DESKTOP, portal)
            .unwrap()
            .build()
            .await
            .unwrap()
    });

    let mut keys = GlobalKeys::start(tx, None).expect("the portal");
    assert_eq!(keys.backend(), "the Wayland GlobalShortcuts portal");
    let flight = ChannelId(7);
    let failed = keys.bind(
        &[(eframe::egui::Key::F2, vec![flight])],
        Some(eframe::egui::Key::V),
    );
    assert!(failed.is_empty());
    wait_for("the shortcuts bound", || bound.lock().unwrap().len() == 2);
    assert_eq!(
        *bound.lock().unwrap(),
        vec![
            (
                "ptt-0".to_string(),
                "Push to talk (F2)".to_string(),
                Some("F2".to_string())
            ),
            (
                "overlay".to_string(),
                "Show or hide the overlay".to_string(),
                Some("v".to_string())
            ),
        ]
    );
    wait_for("the assigned keys shown", || keys.assigned().is_some());
    assert_eq!(
        keys.assigned().unwrap(),
        "Push to talk (F2): Press F2, Show or hide the overlay: Press v"
    );

    // The desktop says the shortcut went down and up: PTT on /flight, then release.
    let signal = |name: &str, id: &str| {
        let path = session.lock().unwrap().clone().unwrap();
        let emitter = SignalEmitter::new(&connection, DESKTOP).unwrap();
        let options: HashMap<String, Value<'_>> = HashMap::new();
        runtime.block_on(async {
            match name {
                "activated" => Portal::activated(&emitter, path.as_ref(), id, 1, options).await,
                _ => Portal::deactivated(&emitter, path.as_ref(), id, 2, options).await,
            }
            .unwrap()
        });
    };
    signal("activated", "ptt-0");
    assert!(matches!(next_command(&mut rx), NodeCommand::PttDown(c) if c == vec![flight]));
    signal("deactivated", "ptt-0");
    assert!(matches!(next_command(&mut rx), NodeCommand::PttUp));
    // The overlay's shortcut toggles the overlay and keys nothing.
    signal("activated", "overlay");
    signal("deactivated", "overlay");
    wait_for("the overlay toggle", || keys.take_overlay_toggle());
    assert!(rx.try_recv().is_err());

    // Rebinding opens a new session with the new keys.
    keys.bind(&[(eframe::egui::Key::F3, vec![flight])], None);
    wait_for("the new shortcuts bound", || {
        bound.lock().unwrap().first().and_then(|b| b.2.clone()) == Some("F3".into())
    });
    drop(keys);
    drop(connection);
}
