//! The `hiber` binary: parses the command line and hands over to the
//! library. Input errors end with status 2 before anything is started.

use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::channel;

use clap::Parser;
use vmm::api::{self, ApiServer};
use vmm::cli::{ApiArgs, Cli, Command, HostArgs, MemBackendArg, QuirksArg, RestoreArgs, RunArgs};
use vmm::config::{ConsoleConfig, MachineConfig, MAX_VCPUS};
use vmm::console::Console;
use vmm::controller::{ApiChannel, Controller, Outcome, Preboot};
use vmm::cpu::{self, CpuOverrides, QuirkMode};
use vmm::device_args::{drive_configs, net_configs};
use vmm::machine::{open_kvm, Machine, MachineError};
use vmm::persist::{MemBackend, RestoreOptions};
use vmm::preboot::{self, PendingConfig, PrebootError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status for input Hiber refuses.
const EXIT_USAGE: u8 = 2;
/// Exit status for a failure while running.
const EXIT_FAILURE: u8 = 1;

/// A failure and the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    fn runtime(err: &dyn std::error::Error) -> Self {
        Failure {
            code: EXIT_FAILURE,
            message: api::error_chain(err),
        }
    }
}

fn main() -> ExitCode {
    vmm::timing::mark_process_start();
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Restore(args) => restore(args),
        Command::Pause(a) => patch_vm(&a, "Paused"),
        Command::Resume(a) => patch_vm(&a, "Resumed"),
        Command::Snapshot(a) => {
            let body = serde_json::json!({
                "snapshot_type": "Full",
                "snapshot_path": a.snapshot,
                "mem_file_path": a.mem,
            });
            call_api(&a.api_sock, "PUT", "/snapshot/create", Some(&body))
        }
        Command::Inspect(a) => vmm::inspect::run(&a.snapshot, a.mem.as_deref(), a.json)
            .map(|()| 0)
            .map_err(|e| Failure::usage(api::error_chain(&e))),
        Command::HostCheck(h) => host_check(&h),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("hiber: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}

fn quirk_mode(h: &HostArgs) -> QuirkMode {
    match h.cpu_quirks {
        QuirksArg::Auto => QuirkMode::Auto,
        QuirksArg::Off => QuirkMode::Off,
        QuirksArg::Reprobe => QuirkMode::Reprobe,
    }
}

fn overrides(h: &HostArgs) -> Result<CpuOverrides, Failure> {
    CpuOverrides::from_names(&h.cpu_hide).map_err(|e| Failure::usage(e.to_string()))
}

fn refused(e: &PrebootError) -> Failure {
    Failure::usage(api::error_chain(e))
}

/// Refusals that need no KVM: they come before anything is created.
fn validate_run(args: &RunArgs) -> Result<MachineConfig, Failure> {
    if args.vcpus == 0 || args.vcpus > MAX_VCPUS {
        return Err(Failure::usage(format!(
            "--vcpus {} is out of range: give 1 to {MAX_VCPUS}",
            args.vcpus
        )));
    }
    match &args.kernel {
        Some(k) => preboot::check_kernel(k).map_err(|e| refused(&e))?,
        None if args.api_sock.is_none() => {
            return Err(Failure::usage(
                "--kernel is required (or --api-sock, to configure the guest or load a \
                 snapshot through the API)",
            ))
        }
        None => {}
    }
    if let Some(i) = &args.initrd {
        preboot::check_initrd(i).map_err(|e| refused(&e))?;
    }
    let config = machine_config(args);
    preboot::check_devices(&config).map_err(|e| refused(&e))?;
    Ok(config)
}

/// The machine the command line asks for; without --kernel, the defaults
/// the pre-boot API starts from.
fn machine_config(args: &RunArgs) -> MachineConfig {
    MachineConfig {
        vcpus: args.vcpus,
        mem: args.mem,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        console: args.console.clone(),
        drives: drive_configs(&args.drives),
        nets: net_configs(&args.nets),
        vsock: args.vsock.as_ref().map(|v| v.0.clone()),
        entropy: !args.no_entropy,
    }
}

fn classify(e: MachineError) -> Failure {
    let usage = matches!(
        e,
        MachineError::Kvm { .. } | MachineError::Open { .. } | MachineError::Boot(_)
    );
    let message = api::error_chain(&e);
    Failure {
        code: if usage { EXIT_USAGE } else { EXIT_FAILURE },
        message,
    }
}

fn start_api(path: Option<&Path>) -> Result<Option<(ApiServer, ApiChannel)>, Failure> {
    let Some(path) = path else { return Ok(None) };
    let (tx, calls) = channel();
    let wake = EventFd::new(EFD_NONBLOCK).map_err(|e| Failure::runtime(&e))?;
    let server_wake = wake.try_clone().map_err(|e| Failure::runtime(&e))?;
    let server = ApiServer::start(path, tx, server_wake)
        .map_err(|e| Failure::usage(api::error_chain(&e)))?;
    Ok(Some((server, ApiChannel { calls, wake })))
}

fn open_console(cfg: &ConsoleConfig) -> Result<Console, Failure> {
    Console::open(cfg).map_err(|e| Failure::usage(api::error_chain(&e)))
}

fn finish(outcome: Outcome) -> Result<u8, Failure> {
    match &outcome {
        Outcome::Panic => eprintln!("hiber: the guest kernel panicked"),
        Outcome::Crash => eprintln!("hiber: the guest crashed"),
        Outcome::Error(e) => eprintln!("hiber: {e}"),
        _ => {}
    }
    Ok(outcome.exit_code() as u8)
}

fn run(args: RunArgs) -> Result<u8, Failure> {
    let config = validate_run(&args)?;
    let overrides = overrides(&args.host)?;
    let kvm = open_kvm().map_err(classify)?;
    let console = open_console(&args.console)?;
    let api = start_api(args.api_sock.as_deref())?;
    let (server, channel) = api.map_or((None, None), |(s, c)| (Some(s), Some(c)));
    let mut preboot = None;
    let machine = if args.kernel.is_some() {
        let quirks = cpu::host_quirks(&kvm, quirk_mode(&args.host), &overrides)
            .map_err(|e| Failure::runtime(&e))?;
        let m =
            Machine::boot(config, kvm, quirks, console.sink(), args.paused).map_err(classify)?;
        Some(m)
    } else {
        if !(args.drives.is_empty() && args.nets.is_empty() && args.vsock.is_none()) {
            log::info!(
                "the device flags configure a guest started with InstanceStart; a snapshot \
                 load brings its own devices (use network_overrides to change TAPs)"
            );
        }
        preboot = Some(Preboot {
            pending: PendingConfig::new(config),
            quirk_mode: quirk_mode(&args.host),
            overrides,
            start_paused: args.paused,
        });
        None
    };
    let id = instance_id();
    let mut controller = Controller::new(id, machine, args.paused, console, channel)
        .map_err(|e| Failure::runtime(&e))?;
    if let Some(p) = preboot {
        controller = controller.with_preboot(p);
    }
    let outcome = controller.run().map_err(|e| Failure::runtime(&e))?;
    drop(server);
    finish(outcome)
}

fn restore(args: RestoreArgs) -> Result<u8, Failure> {
    let net_overrides: Vec<_> = args.net_overrides.iter().map(|o| o.0.clone()).collect();
    preboot::check_overrides(&net_overrides, args.vsock_uds.as_deref()).map_err(|e| refused(&e))?;
    let drive_overrides: Vec<_> = args.drive_overrides.iter().map(|o| o.0.clone()).collect();
    preboot::check_drive_overrides(&drive_overrides).map_err(|e| refused(&e))?;
    let console = open_console(&args.console)?;
    let api = start_api(args.api_sock.as_deref())?;
    let (server, channel) = api.map_or((None, None), |(s, c)| (Some(s), Some(c)));
    let mut controller = Controller::new(instance_id(), None, true, console, channel)
        .map_err(|e| Failure::runtime(&e))?;
    let opts = RestoreOptions {
        backend: match args.mem_backend {
            MemBackendArg::Map => MemBackend::Map,
            MemBackendArg::Copy => MemBackend::Copy,
        },
        verify_memory: !args.trust_memory,
        net_overrides,
        vsock_uds_override: args.vsock_uds.clone(),
        drive_overrides,
    };
    controller
        .load(&args.snapshot, &args.mem, opts, !args.paused)
        .map_err(|e| Failure {
            code: if e.status() < 500 {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            },
            message: api::error_chain(&e),
        })?;
    let outcome = controller.run().map_err(|e| Failure::runtime(&e))?;
    drop(server);
    finish(outcome)
}

fn instance_id() -> String {
    format!("hiber-{}", std::process::id())
}

fn patch_vm(a: &ApiArgs, state: &str) -> Result<u8, Failure> {
    let body = serde_json::json!({ "state": state });
    call_api(&a.api_sock, "PATCH", "/vm", Some(&body))
}

fn call_api(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<u8, Failure> {
    let (status, reply) =
        api::request(sock, method, path, body).map_err(|e| Failure::usage(e.to_string()))?;
    if status >= 300 {
        let msg = api::client::fault_message(reply.as_ref()).unwrap_or("no fault message");
        return Err(Failure {
            code: EXIT_FAILURE,
            message: format!("{method} {path} answered {status}: {msg}"),
        });
    }
    if let Some(v) = reply {
        println!("{v}");
    }
    Ok(0)
}

fn host_check(h: &HostArgs) -> Result<u8, Failure> {
    let overrides = overrides(h)?;
    let kvm = open_kvm().map_err(classify)?;
    let quirks =
        cpu::host_quirks(&kvm, quirk_mode(h), &overrides).map_err(|e| Failure::runtime(&e))?;
    println!("{}", quirks.describe());
    Ok(0)
}
