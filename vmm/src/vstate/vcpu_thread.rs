//! The thread that runs one vCPU, and the handle the VMM steers it with.
//!
//! The VMM sends a command over a channel and then kicks the thread with a
//! real-time signal, which makes a KVM_RUN in progress return with EINTR.
//! A kick that arrives between two KVM_RUNs is lost, so the VMM repeats it
//! until the thread answers.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::exits::{run_once, ExitContext, Next, StopReason};
use super::vcpu::{Vcpu, VcpuError, VcpuState};

/// RFLAGS.IF: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;
/// How often an unanswered command is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// How long the VMM waits for a vCPU to answer at all.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the VMM asks a vCPU thread to do.
#[derive(Debug)]
pub enum VcpuCommand {
    /// Leave the guest and wait, with any I/O in flight completed.
    Pause,
    /// Go back into the guest.
    Resume,
    /// Reply with the complete state (only while paused).
    SaveState,
    /// Tell whether the vCPU is halted with interrupts off for good.
    CheckHalted,
    /// End the thread.
    Exit,
}

/// A vCPU thread's answer.
#[derive(Debug)]
pub enum VcpuReply {
    /// Now paused.
    Paused,
    /// Now running.
    Resumed,
    /// The saved state, or why it could not be read.
    State(Box<Result<VcpuState, VcpuError>>),
    /// Whether the vCPU is halted for good.
    Halted(bool),
    /// The command cannot be done in this state.
    Refused(&'static str),
}

/// Errors of talking to a vCPU thread.
#[derive(Debug, thiserror::Error)]
pub enum VcpuThreadError {
    /// The thread could not be started.
    #[error("could not start the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    /// The thread is gone.
    #[error("vCPU {0} is no longer running")]
    Gone(u8),
    /// The thread did not answer in time.
    #[error("vCPU {0} did not answer within {1:?}")]
    Timeout(u8, Duration),
}

/// Tells the VMM that a vCPU stopped for good.
#[derive(Clone)]
pub struct StopNotifier {
    tx: Sender<(u8, StopReason)>,
    evt: Arc<EventFd>,
}

impl StopNotifier {
    /// A notifier sending on `tx` and waking the event loop through `evt`.
    pub fn new(tx: Sender<(u8, StopReason)>, evt: Arc<EventFd>) -> Self {
        StopNotifier { tx, evt }
    }

    fn notify(&self, id: u8, reason: StopReason) {
        let _ = self.tx.send((id, reason));
        let _ = self.evt.write(1);
    }
}

/// The VMM's side of a running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    tx: Sender<VcpuCommand>,
    rx: Receiver<VcpuReply>,
    thread: Option<JoinHandle<()>>,
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            log::error!("could not install the vCPU kick signal handler: {e}");
        }
    });
}

impl VcpuHandle {
    /// Starts the thread of `vcpu`, paused or running.
    pub fn spawn(
        vcpu: Vcpu,
        ctx: Arc<ExitContext>,
        msr_indices: Arc<Vec<u32>>,
        notifier: StopNotifier,
        start_paused: bool,
    ) -> Result<Self, VcpuThreadError> {
        install_kick_handler();
        let id = vcpu.id;
        let (tx, cmd_rx) = channel();
        let (reply_tx, rx) = channel();
        let runner = Runner {
            vcpu,
            ctx,
            msr_indices,
            notifier,
            commands: cmd_rx,
            replies: reply_tx,
            paused: start_paused,
            stopped: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || runner.run())
            .map_err(|e| VcpuThreadError::Spawn(id, e))?;
        Ok(VcpuHandle {
            id,
            tx,
            rx,
            thread: Some(thread),
        })
    }

    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sends `cmd` and waits for the answer, kicking the thread until it
    /// notices.
    pub fn request(&self, cmd: VcpuCommand) -> Result<VcpuReply, VcpuThreadError> {
        self.tx
            .send(cmd)
            .map_err(|_| VcpuThreadError::Gone(self.id))?;
        let start = Instant::now();
        loop {
            self.kick();
            match self.rx.recv_timeout(KICK_INTERVAL) {
                Ok(reply) => return Ok(reply),
                Err(RecvTimeoutError::Disconnected) => return Err(VcpuThreadError::Gone(self.id)),
                Err(RecvTimeoutError::Timeout) if start.elapsed() > ANSWER_TIMEOUT => {
                    return Err(VcpuThreadError::Timeout(self.id, ANSWER_TIMEOUT))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn kick(&self) {
        if let Some(thread) = &self.thread {
            let _ = thread.kill(kick_signal());
        }
    }

    /// Ends the thread and waits for it.
    pub fn exit(mut self) {
        self.stop_thread();
    }

    /// Sends `Exit` and kicks until the thread has ended: a vCPU that exits
    /// to the VMM all the time (a guest spinning on a port) can miss any
    /// single kick, which only lands while it is inside KVM_RUN.
    fn stop_thread(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = self.tx.send(VcpuCommand::Exit);
        let start = Instant::now();
        while !thread.is_finished() && start.elapsed() < ANSWER_TIMEOUT {
            let _ = thread.kill(kick_signal());
            std::thread::sleep(KICK_INTERVAL);
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            log::error!("vCPU {} did not stop within {ANSWER_TIMEOUT:?}", self.id);
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

struct Runner {
    vcpu: Vcpu,
    ctx: Arc<ExitContext>,
    msr_indices: Arc<Vec<u32>>,
    notifier: StopNotifier,
    commands: Receiver<VcpuCommand>,
    replies: Sender<VcpuReply>,
    paused: bool,
    stopped: bool,
}

impl Runner {
    fn run(mut self) {
        log::debug!("vCPU {} thread started", self.vcpu.id);
        let mut entered = false;
        loop {
            if self.paused || self.stopped {
                match self.commands.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                }
            }
            if !entered {
                entered = true;
                log::info!(
                    "vCPU {} entering the guest, {} ms after process start",
                    self.vcpu.id,
                    crate::timing::since_start().as_millis()
                );
            }
            match run_once(&mut self.vcpu.fd, self.vcpu.id, &self.ctx) {
                Next::Continue => {}
                Next::Interrupted => {
                    if !self.drain_commands() {
                        return;
                    }
                }
                Next::Stop(reason) => {
                    self.stopped = true;
                    self.notifier.notify(self.vcpu.id, reason);
                }
            }
        }
    }

    /// Handles every queued command; false when the thread must end.
    fn drain_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            if !self.handle(cmd) {
                return false;
            }
        }
        true
    }

    fn handle(&mut self, cmd: VcpuCommand) -> bool {
        let reply = match cmd {
            VcpuCommand::Exit => return false,
            VcpuCommand::Pause => self.pause(),
            VcpuCommand::Resume if self.stopped => VcpuReply::Refused("the vCPU has stopped"),
            VcpuCommand::Resume => {
                self.paused = false;
                VcpuReply::Resumed
            }
            VcpuCommand::SaveState if !self.paused => {
                VcpuReply::Refused("the vCPU must be paused first")
            }
            VcpuCommand::SaveState => {
                VcpuReply::State(Box::new(self.vcpu.save_state(&self.msr_indices)))
            }
            VcpuCommand::CheckHalted => VcpuReply::Halted(self.halted_for_good()),
        };
        let _ = self.replies.send(reply);
        true
    }

    /// Leaves the guest with any port or MMIO access it exited for
    /// completed: KVM finishes that access on the next KVM_RUN, which
    /// `immediate_exit` makes return at once.
    fn pause(&mut self) -> VcpuReply {
        if self.paused || self.stopped {
            self.paused = true;
            return VcpuReply::Paused;
        }
        self.vcpu.fd.set_kvm_immediate_exit(1);
        loop {
            match run_once(&mut self.vcpu.fd, self.vcpu.id, &self.ctx) {
                Next::Interrupted => break,
                Next::Continue => continue,
                Next::Stop(reason) => {
                    self.stopped = true;
                    self.notifier.notify(self.vcpu.id, reason);
                    break;
                }
            }
        }
        self.vcpu.fd.set_kvm_immediate_exit(0);
        if let Err(e) = self.vcpu.fd.kvmclock_ctrl() {
            // A guest that has not enabled kvmclock yet refuses this.
            log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", self.vcpu.id);
        }
        self.paused = true;
        VcpuReply::Paused
    }

    fn halted_for_good(&self) -> bool {
        let Ok(mp) = self.vcpu.fd.get_mp_state() else {
            return false;
        };
        match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
            KVM_MP_STATE_HALTED => self
                .vcpu
                .fd
                .get_regs()
                .map(|r| r.rflags & RFLAGS_IF == 0)
                .unwrap_or(false),
            _ => false,
        }
    }
}
