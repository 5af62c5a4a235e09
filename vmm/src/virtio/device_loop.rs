//! The thread that serves the virtio devices: one event-manager loop with a
//! subscriber per device (its queue ioeventfds and backend descriptors) and
//! a control subscriber, through which the VMM pauses the loop for a
//! snapshot and stops it.
//!
//! Devices run in their own thread rather than in the controller's loop so
//! that a slow backend (a disk write, say) never delays the control API,
//! and so that the loop can be held still while a snapshot is taken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A subscriber the loop can hold.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How long the VMM waits for the loop to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the device loop.
#[derive(Debug, thiserror::Error)]
pub enum DeviceLoopError {
    /// The loop could not be set up.
    #[error("could not set up the virtio device loop")]
    Setup(#[source] std::io::Error),
    /// The event manager could not be created.
    #[error("could not create the virtio device event manager")]
    Manager(#[source] event_manager::Error),
    /// The thread could not be started.
    #[error("could not start the virtio device thread")]
    Spawn(#[source] std::io::Error),
    /// The loop did not answer.
    #[error("the virtio device thread did not answer a {0} request within 10 s")]
    NoAnswer(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Pause,
    Resume,
    Exit,
}

/// The control subscriber: runs commands inside the loop thread.
struct Control {
    wake: EventFd,
    commands: Receiver<Command>,
    answers: Sender<Command>,
    exit: Arc<AtomicBool>,
}

impl Control {
    /// Holds the loop still until a resume or an exit.
    fn paused(&mut self) {
        log::debug!("virtio device loop paused");
        while let Ok(cmd) = self.commands.recv() {
            let _ = self.answers.send(cmd);
            match cmd {
                Command::Pause => {}
                Command::Resume => break,
                Command::Exit => {
                    self.exit.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        log::debug!("virtio device loop running");
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("virtio device loop: cannot watch its control eventfd: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.wake.read();
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = self.answers.send(cmd);
            match cmd {
                Command::Pause => self.paused(),
                Command::Resume => {}
                Command::Exit => self.exit.store(true, Ordering::SeqCst),
            }
            if self.exit.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// The running device loop.
pub struct DeviceLoop {
    wake: EventFd,
    commands: Sender<Command>,
    answers: Receiver<Command>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceLoop {
    /// Starts the loop thread serving `subscribers`.
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, DeviceLoopError> {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(DeviceLoopError::Setup)?;
        let (commands, command_rx) = channel();
        let (answer_tx, answers) = channel();
        let exit = Arc::new(AtomicBool::new(false));
        let control = Control {
            wake: wake.try_clone().map_err(DeviceLoopError::Setup)?,
            commands: command_rx,
            answers: answer_tx,
            exit: exit.clone(),
        };
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(DeviceLoopError::Manager)?;
        manager.add_subscriber(Arc::new(Mutex::new(control)));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let thread = std::thread::Builder::new()
            .name("hiber-virtio".into())
            .spawn(move || run(manager, exit))
            .map_err(DeviceLoopError::Spawn)?;
        Ok(DeviceLoop {
            wake,
            commands,
            answers,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command, what: &'static str) -> Result<(), DeviceLoopError> {
        self.commands
            .send(cmd)
            .map_err(|_| DeviceLoopError::NoAnswer(what))?;
        let _ = self.wake.write(1);
        match self.answers.recv_timeout(ANSWER_TIMEOUT) {
            Ok(_) => Ok(()),
            Err(_) => Err(DeviceLoopError::NoAnswer(what)),
        }
    }

    /// Holds the loop still: no device touches guest memory until
    /// [`Self::resume`].
    pub fn pause(&self) -> Result<(), DeviceLoopError> {
        self.send(Command::Pause, "pause")
    }

    /// Lets the loop run again.
    pub fn resume(&self) -> Result<(), DeviceLoopError> {
        self.send(Command::Resume, "resume")
    }

    /// Stops the loop and waits for its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if self.send(Command::Exit, "stop").is_ok() {
                let _ = thread.join();
            } else {
                log::warn!("the virtio device thread did not stop; leaving it");
            }
        }
    }
}

impl Drop for DeviceLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut manager: EventManager<Subscriber>, exit: Arc<AtomicBool>) {
    while !exit.load(Ordering::SeqCst) {
        if let Err(e) = manager.run() {
            log::error!("virtio device loop failed, devices stop: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its events; proves the loop serves subscribers and that a
    /// paused loop serves none.
    struct Counter {
        evt: EventFd,
        seen: Arc<Mutex<u32>>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.evt.read();
            *self.seen.lock().unwrap() += 1;
        }
    }

    fn wait_for(seen: &Arc<Mutex<u32>>, n: u32) -> bool {
        for _ in 0..200 {
            if *seen.lock().unwrap() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_paused_loop_serves_nothing_until_resumed() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(Mutex::new(0));
        let counter = Counter {
            evt: evt.try_clone().unwrap(),
            seen: seen.clone(),
        };
        let mut lp = DeviceLoop::start(vec![Arc::new(Mutex::new(counter))]).unwrap();
        evt.write(1).unwrap();
        assert!(wait_for(&seen, 1));
        lp.pause().unwrap();
        evt.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*seen.lock().unwrap(), 1);
        lp.resume().unwrap();
        assert!(wait_for(&seen, 2));
        lp.stop();
        lp.stop();
    }

    #[test]
    fn a_paused_loop_stops() {
        let mut lp = DeviceLoop::start(Vec::new()).unwrap();
        lp.pause().unwrap();
        lp.pause().unwrap();
        lp.stop();
    }
}
