//! The relay as a Windows service, beside the systemd unit it has on Linux: installed with
//! `callsign-relay service install --config FILE`, started and stopped by the service manager
//! (`sc start|stop callsign-relay`), and told to re-read its configuration with
//! `sc control callsign-relay paramchange` (what SIGHUP does on Linux: orgs added or removed
//! start or stop, the others keep their links).

use anyhow::{Context, Result};
use callsign_relay::RelayConfig;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

const NAME: &str = "callsign-relay";

/// The configuration the service runs from: the dispatcher's entry point takes no arguments
/// of ours, so `run` leaves it here first.
static CONFIG: OnceLock<PathBuf> = OnceLock::new();

/// Registers the service to run `service run --config <config>` as LocalService at boot.
pub(crate) fn install(config: &Path) -> Result<()> {
    let config =
        std::path::absolute(config).with_context(|| format!("resolving {}", config.display()))?;
    RelayConfig::load(&config)?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("opening the service manager (run as an administrator)")?;
    let info = ServiceInfo {
        name: OsString::from(NAME),
        display_name: OsString::from("Callsign relay"),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe().context("finding this executable")?,
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            config.clone().into(),
        ],
        dependencies: vec![],
        // Not LocalSystem: a relay needs no rights beyond its files and a UDP port.
        account_name: Some(OsString::from("NT AUTHORITY\\LocalService")),
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .context("creating the service")?;
    service
        .set_description("Forwards an org's sealed voice; cannot decrypt it")
        .context("describing the service")?;
    println!(
        "installed {NAME} (runs {} as LocalService, which must be able to read it and its key);\n\
         start: sc start {NAME}   stop: sc stop {NAME}   reload: sc control {NAME} paramchange",
        config.display()
    );
    Ok(())
}

/// Stops the service if it runs, and removes it.
pub(crate) fn uninstall() -> Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("opening the service manager (run as an administrator)")?;
    let service = manager
        .open_service(
            NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .context("opening the service")?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
    }
    service.delete().context("removing the service")?;
    println!("removed {NAME}");
    Ok(())
}

/// Hands this process to the service manager, which calls [`service_main`].
pub(crate) fn run(config: PathBuf) -> Result<()> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(NAME, ffi_service_main)
        .context("starting as a service (this command is for the service manager)")
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    let Some(config) = CONFIG.get().cloned() else {
        return;
    };
    log_to_file(&config);
    if let Err(e) = serve(config) {
        tracing::error!("{e:#}");
    }
}

/// Logs to `callsign-relay.log` beside the configuration: a service has no console.
fn log_to_file(config: &Path) {
    let path = config.with_file_name("callsign-relay.log");
    if let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,libp2p=warn,quinn=warn".into()),
            )
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    }
}

fn serve(config: PathBuf) -> Result<()> {
    let runtime = super::runtime()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Mutex::new(Some(stop_tx));
    let (reload_tx, reloads) = tokio::sync::mpsc::unbounded_channel();
    let path = config.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(tx) = stop_tx.lock().ok().and_then(|mut s| s.take()) {
                let _ = tx.send(());
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            match RelayConfig::load(&path) {
                Ok(config) => {
                    tracing::info!(path = %path.display(), "paramchange: reloading");
                    let _ = reload_tx.send(config);
                }
                Err(e) => tracing::error!(
                    %e,
                    "paramchange: the configuration does not load; nothing changed"
                ),
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = service_control_handler::register(NAME, handler)
        .context("registering with the service manager")?;
    let report = |state, accept, code| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code: ServiceExitCode::Win32(code),
            checkpoint: 0,
            wait_hint: Duration::from_secs(10),
            process_id: None,
        })
    };
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP
            | ServiceControlAccept::SHUTDOWN
            | ServiceControlAccept::PARAM_CHANGE,
        0,
    )?;
    let stopped = async {
        let _ = stop_rx.await;
    };
    let result = super::run_until(runtime, config, stopped, reloads);
    // ERROR_SERVICE_SPECIFIC_ERROR-style failure: 1 tells the manager it did not end well.
    report(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        u32::from(result.is_err()),
    )?;
    result
}
