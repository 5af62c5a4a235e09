//! Interrupt lines as event fds: the VMM registers each one as a KVM irqfd.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: writing the event fd makes KVM assert the GSI it was registered
/// for. vm-superio devices raise their interrupt through this type.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`, an event fd the VMM has registered (or will register) as an irqfd.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The event fd behind this line.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_superio::Trigger;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_signals_the_event_fd() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let line = EventFdTrigger::new(evt.try_clone().unwrap());
        assert!(evt.read().is_err(), "a fresh event fd must not be readable");
        line.trigger().unwrap();
        line.trigger().unwrap();
        assert_eq!(evt.read().unwrap(), 2);
    }
}
