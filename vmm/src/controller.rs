//! The VMM's event loop: console input, the control API, vCPU stops, the
//! guest's reset line and the halt watchdog, all served by one
//! event-manager subscriber that owns the machine.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{
    error_chain, ApiCall, ApiRequest, ApiResponse, InstanceInfo, LoadSnapshotParams, VmRunState,
};
use crate::config::MachineConfig;
use crate::console::{Console, ConsoleInput};
use crate::cpu::{self, CpuOverrides, QuirkMode};
use crate::machine::{open_kvm, Machine, MachineError};
use crate::persist::{self, RestoreOptions};
use crate::preboot::{self, PendingConfig, PrebootError, PrebootRequest};
use crate::vstate::exits::StopReason;

const TOKEN_STOP: u32 = 1;
const TOKEN_RESET: u32 = 2;
const TOKEN_API: u32 = 3;
const TOKEN_HALT_TIMER: u32 = 4;
const TOKEN_INPUT_TIMER: u32 = 5;
const TOKEN_CONSOLE: u32 = 6;

/// How often the watchdog checks whether the guest halted for good.
const HALT_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// How soon input that did not fit in the UART FIFO is offered again.
const INPUT_RETRY: Duration = Duration::from_millis(10);

/// How the VMM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest rebooted (Hiber does not restart it).
    Reset,
    /// The guest powered off or halted.
    PowerOff,
    /// The guest kernel panicked.
    Panic,
    /// The guest reported a crash through KVM.
    Crash,
    /// The user quit from the console.
    Quit,
    /// Running the guest failed.
    Error(String),
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Reset | Outcome::PowerOff | Outcome::Quit => 0,
            Outcome::Panic | Outcome::Crash | Outcome::Error(_) => 1,
        }
    }
}

/// The control API as the event loop sees it.
pub struct ApiChannel {
    /// Calls from the server thread.
    pub calls: Receiver<ApiCall>,
    /// Written by the server with every call.
    pub wake: EventFd,
}

/// What a process started without a kernel needs to boot one when
/// `InstanceStart` comes.
pub struct Preboot {
    /// The configuration built so far (seeded from the command line).
    pub pending: PendingConfig,
    /// How to handle this host's CPU quirks.
    pub quirk_mode: QuirkMode,
    /// The user's CPU feature overrides.
    pub overrides: CpuOverrides,
    /// Whether the booted guest's vCPUs start paused.
    pub start_paused: bool,
}

/// Owns the machine and reacts to everything that happens to it.
pub struct Controller {
    id: String,
    machine: Option<Machine>,
    preboot: Option<Preboot>,
    paused: bool,
    console: Console,
    console_fds: Vec<RawFd>,
    pending_input: VecDeque<u8>,
    api: Option<ApiChannel>,
    halt_timer: TimerFd,
    input_timer: TimerFd,
    halted_checks: u8,
    outcome: Option<Outcome>,
}

impl Controller {
    /// A controller for `machine` (None: wait for a snapshot load).
    pub fn new(
        id: String,
        machine: Option<Machine>,
        paused: bool,
        console: Console,
        api: Option<ApiChannel>,
    ) -> std::io::Result<Self> {
        let mut halt_timer = TimerFd::new()?;
        halt_timer.reset(HALT_CHECK_PERIOD, Some(HALT_CHECK_PERIOD))?;
        Ok(Controller {
            id,
            machine,
            preboot: None,
            paused,
            console,
            console_fds: Vec::new(),
            pending_input: VecDeque::new(),
            api,
            halt_timer,
            input_timer: TimerFd::new()?,
            halted_checks: 0,
            outcome: None,
        })
    }

    /// Lets the API configure and start a guest (Firecracker's pre-boot
    /// calls and `InstanceStart`) in a controller that has no machine yet.
    pub fn with_preboot(mut self, preboot: Preboot) -> Self {
        self.preboot = Some(preboot);
        self
    }

    fn run_state(&self) -> VmRunState {
        match (&self.machine, self.paused) {
            (None, _) => VmRunState::NotStarted,
            (Some(_), true) => VmRunState::Paused,
            (Some(_), false) => VmRunState::Running,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            match &outcome {
                Outcome::Error(e) => log::error!("{e}"),
                other => log::info!("guest ended: {other:?}"),
            }
            self.outcome = Some(outcome);
        }
    }

    fn register_machine(&self, ops: &mut EventOps) {
        if let Some(m) = &self.machine {
            let _ = ops.add(Events::with_data(&*m.stop_evt, TOKEN_STOP, EventSet::IN));
            let reset = &m.devices.reset_evt;
            let _ = ops.add(Events::with_data(reset, TOKEN_RESET, EventSet::IN));
        }
    }

    fn sync_console_fds(&mut self, ops: &mut EventOps) {
        let wanted = self.console.input_fds();
        for fd in self.console_fds.iter().filter(|fd| !wanted.contains(fd)) {
            let _ = ops.remove(Events::with_data_raw(*fd, TOKEN_CONSOLE, EventSet::IN));
        }
        let mut watched = Vec::with_capacity(wanted.len());
        for fd in wanted {
            if self.console_fds.contains(&fd) {
                watched.push(fd);
                continue;
            }
            match ops.add(Events::with_data_raw(fd, TOKEN_CONSOLE, EventSet::IN)) {
                Ok(()) => watched.push(fd),
                // epoll refuses regular files and /dev/null: no input comes
                // from those anyway.
                Err(e) => log::info!("console input is not watched ({e}); guest input is off"),
            }
        }
        self.console_fds = watched;
    }

    fn on_stop(&mut self) {
        let Some(m) = &self.machine else { return };
        let _ = m.stop_evt.read();
        let stops: Vec<_> = m.stop_rx.try_iter().collect();
        for (id, reason) in stops {
            log::info!("vCPU {id} stopped: {reason:?}");
            let outcome = match reason {
                StopReason::Reset => self.reset_outcome(),
                StopReason::PowerOff => Outcome::PowerOff,
                StopReason::Crash => Outcome::Crash,
                StopReason::Error(e) => Outcome::Error(e),
            };
            self.finish(outcome);
        }
    }

    fn reset_outcome(&self) -> Outcome {
        let panicked = self
            .machine
            .as_ref()
            .is_some_and(|m| m.panic_seen.load(Ordering::SeqCst));
        if panicked {
            log::error!("the guest kernel panicked (see the console above)");
            Outcome::Panic
        } else {
            Outcome::Reset
        }
    }

    fn on_reset(&mut self) {
        if let Some(m) = &self.machine {
            let _ = m.devices.reset_evt.read();
            log::info!("the guest pulsed the reset line (reboot)");
            let outcome = self.reset_outcome();
            self.finish(outcome);
        }
    }

    fn on_halt_timer(&mut self) {
        let _ = self.halt_timer.wait();
        let Some(m) = self.machine.as_ref().filter(|_| !self.paused) else {
            return;
        };
        match m.halted_for_good() {
            Ok(true) => self.halted_checks += 1,
            Ok(false) => self.halted_checks = 0,
            Err(e) => log::debug!("halt check failed: {e}"),
        }
        // Two checks in a row rule out a vCPU caught between cli and hlt.
        if self.halted_checks >= 2 {
            log::info!("every vCPU halted with interrupts off: the guest powered off");
            self.finish(Outcome::PowerOff);
        }
    }

    fn on_console(&mut self, fd: RawFd, ops: &mut EventOps) {
        match self.console.on_readable(fd) {
            ConsoleInput::Bytes(bytes) => {
                self.pending_input.extend(bytes);
                self.flush_input();
            }
            ConsoleInput::Quit => self.finish(Outcome::Quit),
            ConsoleInput::Nothing => {}
        }
        self.sync_console_fds(ops);
    }

    fn flush_input(&mut self) {
        let Some(m) = &self.machine else {
            self.pending_input.clear();
            return;
        };
        let mut serial = m.devices.serial.lock().unwrap();
        let (a, _) = self.pending_input.as_slices();
        let taken = serial.enqueue_input(a).unwrap_or(0);
        drop(serial);
        self.pending_input.drain(..taken);
        if !self.pending_input.is_empty() {
            let _ = self.input_timer.reset(INPUT_RETRY, None);
        }
    }

    fn on_api(&mut self, ops: &mut EventOps) {
        let calls: Vec<ApiCall> = match &self.api {
            Some(api) => {
                let _ = api.wake.read();
                api.calls.try_iter().collect()
            }
            None => return,
        };
        for call in calls {
            let started = Instant::now();
            let what = format!("{:?}", call.request);
            let response = self.handle_api(&call.request, ops);
            log::debug!("API {what}: {} in {:?}", response.status, started.elapsed());
            call.respond(response);
        }
    }

    fn handle_api(&mut self, request: &ApiRequest, ops: &mut EventOps) -> ApiResponse {
        match request {
            ApiRequest::GetInfo => {
                ApiResponse::ok(InstanceInfo::new(self.id.clone(), self.run_state()).to_json())
            }
            ApiRequest::GetVmConfig => self.vm_config(),
            ApiRequest::Pause => self.api_pause(),
            ApiRequest::Resume => self.api_resume(),
            ApiRequest::CreateSnapshot(p) => self.api_snapshot(&p.snapshot_path, &p.mem_file_path),
            ApiRequest::LoadSnapshot(p) => {
                let response = self.api_load(p);
                self.register_machine(ops);
                response
            }
            ApiRequest::GetMachineConfig => match self.current_config() {
                Some(c) => ApiResponse::ok(preboot::machine_config_json(&c)),
                None => ApiResponse::error(400, "the VM is not started: no configuration yet"),
            },
            ApiRequest::Configure(r) => self.api_configure(r),
            ApiRequest::InstanceStart => {
                let response = self.api_start();
                self.register_machine(ops);
                response
            }
        }
    }

    /// The running machine's configuration, or the one `InstanceStart`
    /// would boot.
    fn current_config(&self) -> Option<MachineConfig> {
        match (&self.machine, &self.preboot) {
            (Some(m), _) => Some(m.config.clone()),
            (None, Some(p)) => Some(p.pending.preview()),
            (None, None) => None,
        }
    }

    fn vm_config(&self) -> ApiResponse {
        match self.current_config() {
            Some(c) => ApiResponse::ok(persist::firecracker_vm_config(&c)),
            None => ApiResponse::error(400, "the VM is not started: no configuration yet"),
        }
    }

    fn api_configure(&mut self, request: &PrebootRequest) -> ApiResponse {
        let result = match &mut self.preboot {
            Some(p) => p.pending.apply(request.clone()),
            None => Err(PrebootError::AfterStart {
                operation: request.operation(),
            }),
        };
        match result {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::error(400, error_chain(&e)),
        }
    }

    /// Boots the configured guest; the caller registers its events.
    fn api_start(&mut self) -> ApiResponse {
        let Some(pre) = &self.preboot else {
            let operation = "InstanceStart".to_string();
            let err = PrebootError::AfterStart { operation };
            return ApiResponse::error(400, error_chain(&err));
        };
        let config = match pre.pending.to_boot() {
            Ok(config) => config,
            Err(e) => return ApiResponse::error(400, error_chain(&e)),
        };
        let start_paused = pre.start_paused;
        match self.boot_configured(config) {
            Ok(machine) => {
                log::info!("guest booted through the API (InstanceStart)");
                self.machine = Some(machine);
                self.paused = start_paused;
                self.halted_checks = 0;
                if let Some(p) = &mut self.preboot {
                    p.pending.mark_started();
                }
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::error(boot_status(&e), error_chain(&e)),
        }
    }

    fn boot_configured(&self, config: MachineConfig) -> Result<Machine, MachineError> {
        let pre = self.preboot.as_ref().expect("checked by the caller");
        let kvm = open_kvm()?;
        let quirks =
            cpu::host_quirks(&kvm, pre.quirk_mode, &pre.overrides).map_err(MachineError::Cpu)?;
        Machine::boot(config, kvm, quirks, self.console_sink(), pre.start_paused)
    }

    fn api_pause(&mut self) -> ApiResponse {
        let Some(m) = &self.machine else {
            return ApiResponse::error(400, "the VM is not started: there is nothing to pause");
        };
        let started = Instant::now();
        match m.pause() {
            Ok(()) => {
                self.paused = true;
                log::info!("vm paused in {:?}", started.elapsed());
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::error(500, crate::api::error_chain(&e)),
        }
    }

    fn api_resume(&mut self) -> ApiResponse {
        let Some(m) = &self.machine else {
            return ApiResponse::error(400, "the VM is not started: there is nothing to resume");
        };
        match m.resume() {
            Ok(()) => {
                self.paused = false;
                self.halted_checks = 0;
                log::info!("vm resumed");
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::error(500, crate::api::error_chain(&e)),
        }
    }

    fn api_snapshot(&mut self, state: &Path, mem: &Path) -> ApiResponse {
        let Some(m) = &self.machine else {
            return ApiResponse::error(400, "the VM is not started: there is nothing to snapshot");
        };
        if !self.paused {
            return ApiResponse::error(
                400,
                "the VM must be paused before a snapshot: send PATCH /vm {\"state\": \"Paused\"}",
            );
        }
        match persist::create_snapshot(m, state, mem) {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::error(e.status(), crate::api::error_chain(&e)),
        }
    }

    fn api_load(&mut self, p: &LoadSnapshotParams) -> ApiResponse {
        if self.machine.is_some() {
            return ApiResponse::error(
                400,
                "this process already runs a VM; load a snapshot into a new `hiber run \
                 --api-sock PATH` started without a kernel",
            );
        }
        if self
            .preboot
            .as_ref()
            .is_some_and(|p| p.pending.configured())
        {
            return ApiResponse::error(400, error_chain(&PrebootError::LoadAfterConfig));
        }
        let vsock = p.vsock_override.as_deref();
        if let Err(e) = preboot::check_overrides(&p.network_overrides, vsock) {
            return ApiResponse::error(400, error_chain(&e));
        }
        if let Err(e) = preboot::check_drive_overrides(&p.drive_overrides) {
            return ApiResponse::error(400, error_chain(&e));
        }
        let opts = RestoreOptions {
            net_overrides: p.network_overrides.clone(),
            vsock_uds_override: p.vsock_override.clone(),
            drive_overrides: p.drive_overrides.clone(),
            ..RestoreOptions::default()
        };
        match self.load(&p.snapshot_path, &p.mem_file_path, opts, p.resume_vm) {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::error(e.status(), crate::api::error_chain(&e)),
        }
    }

    /// Restores a snapshot into this (empty) controller.
    pub fn load(
        &mut self,
        state: &Path,
        mem: &Path,
        opts: RestoreOptions,
        resume: bool,
    ) -> Result<(), persist::PersistError> {
        let sink = self.console_sink();
        let machine = persist::restore(state, mem, opts, sink)?;
        self.machine = Some(machine);
        if let Some(p) = &mut self.preboot {
            p.pending.mark_started();
        }
        self.paused = true;
        if resume {
            let m = self.machine.as_ref().expect("just set");
            m.resume().map_err(persist::PersistError::Resume)?;
            self.paused = false;
            log::info!("vm resumed from the snapshot");
        }
        Ok(())
    }

    fn console_sink(&self) -> Box<dyn std::io::Write + Send> {
        self.console.sink()
    }

    /// Serves events until the guest ends, and says how it ended.
    pub fn run(self) -> Result<Outcome, event_manager::Error> {
        let controller = Arc::new(Mutex::new(self));
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new()?;
        manager.add_subscriber(controller.clone());
        loop {
            manager.run()?;
            let mut c = controller.lock().unwrap();
            if let Some(outcome) = c.outcome.take() {
                if let Some(mut m) = c.machine.take() {
                    m.shutdown();
                }
                return Ok(outcome);
            }
        }
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        self.register_machine(ops);
        if let Some(api) = &self.api {
            let _ = ops.add(Events::with_data(&api.wake, TOKEN_API, EventSet::IN));
        }
        let timer = &self.halt_timer;
        let _ = ops.add(Events::with_data(timer, TOKEN_HALT_TIMER, EventSet::IN));
        let timer = &self.input_timer;
        let _ = ops.add(Events::with_data(timer, TOKEN_INPUT_TIMER, EventSet::IN));
        self.sync_console_fds(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_STOP => self.on_stop(),
            TOKEN_RESET => self.on_reset(),
            TOKEN_API => self.on_api(ops),
            TOKEN_HALT_TIMER => self.on_halt_timer(),
            TOKEN_INPUT_TIMER => {
                let _ = self.input_timer.wait();
                self.flush_input();
            }
            TOKEN_CONSOLE => self.on_console(events.fd(), ops),
            other => log::warn!("event for unknown token {other}"),
        }
    }
}

/// The status for a failed `InstanceStart`: the client's input (kernel,
/// files, sizes) for refusals, the server for failures.
fn boot_status(e: &MachineError) -> u16 {
    match e {
        MachineError::Kvm { .. } | MachineError::Open { .. } | MachineError::Boot(_) => 400,
        _ => 500,
    }
}

impl AsRawFd for ApiChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}
