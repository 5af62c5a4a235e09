//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status and command), with
//! a keyboard that answers its commands but never types.
//!
//! It implements what Linux's i8042 and atkbd drivers use while probing, so they find
//! the controller and keyboard without waiting for timeouts: the command byte, the
//! self and interface tests, enabling and disabling the ports, the output port, the
//! output-buffer writes, and the keyboard's reset, identify, LED and scan-code-set
//! commands. Pulsing the reset line (command 0xfe, what Linux's `reboot=k` does) signals
//! the reset event fd given by the VMM.
//!
//! Limits: there is no mouse. The controller's own AUX loopback (0xd3) works, but no
//! IRQ 12 is raised, so Linux's AUX probe waits its 250 ms for that interrupt and then
//! drops the AUX port; pass `i8042.noaux` on the guest command line to skip that probe.
//! Bytes sent to the absent mouse (0xd4) are dropped. No scan-code translation is done,
//! as no keys are ever pressed. Reading the data port with nothing queued returns 0.

use std::collections::VecDeque;
use std::io;

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;

/// First port of the controller's range; the range covers 0x60 to 0x64.
pub const I8042_BASE: u16 = 0x60;
/// Length of the controller's range (0x61 to 0x63 are not the controller's and read
/// as 0xff).
pub const I8042_LEN: u16 = 5;
/// The ISA interrupt line of the keyboard.
pub const I8042_KBD_IRQ: u32 = 1;
/// How many bytes the output queue holds (the keyboard's own buffer is 16 bytes).
pub const OUTPUT_QUEUE_SIZE: usize = 16;

const DATA_PORT: u16 = 0;
const COMMAND_PORT: u16 = 4;

// Status register bits.
const SR_OUTPUT_FULL: u8 = 0x01;
const SR_SYSTEM: u8 = 0x04;
const SR_LAST_WAS_COMMAND: u8 = 0x08;
const SR_NOT_LOCKED: u8 = 0x10;
const SR_AUX_DATA: u8 = 0x20;

// Command byte bits.
const CB_KBD_INT: u8 = 0x01;
const CB_SYSTEM: u8 = 0x04;
const CB_KBD_DISABLED: u8 = 0x10;
const CB_AUX_DISABLED: u8 = 0x20;
const CB_TRANSLATE: u8 = 0x40;
/// As a BIOS leaves it: keyboard interrupt on, POST passed, AUX off, translation on.
const DEFAULT_COMMAND_BYTE: u8 = CB_KBD_INT | CB_SYSTEM | CB_AUX_DISABLED | CB_TRANSLATE;

// Output port bits: bit 0 low holds the CPU in reset, bit 1 gates A20.
const OP_RESET_HIGH: u8 = 0x01;
const DEFAULT_OUTPUT_PORT: u8 = 0x03;

// Controller commands.
const CMD_READ_COMMAND_BYTE: u8 = 0x20;
const CMD_WRITE_COMMAND_BYTE: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
/// The commands that take a data byte after them.
const COMMANDS_WITH_DATA: [u8; 5] = [
    CMD_WRITE_COMMAND_BYTE,
    CMD_WRITE_OUTPUT_PORT,
    CMD_WRITE_KBD_OUTPUT,
    CMD_WRITE_AUX_OUTPUT,
    CMD_WRITE_TO_AUX,
];

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;

// Keyboard commands and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_CODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
/// The keyboard commands that take a parameter byte after them.
const KBD_COMMANDS_WITH_PARAM: [u8; 3] = [KBD_SET_LEDS, KBD_SCAN_CODE_SET, KBD_TYPEMATIC];
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_CURRENT_SET: u8 = 0x02;

/// Errors of the i8042 controller.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// A saved state holds more output than the queue can.
    #[error(
        "the i8042 state holds {len} output bytes but the queue holds at most \
         {OUTPUT_QUEUE_SIZE}; the snapshot is corrupt or from another device model"
    )]
    OutputOverflow {
        /// Number of bytes in the state.
        len: usize,
    },
    /// A saved state waits for the data byte of a command that takes none.
    #[error("the i8042 state waits for a data byte of command {command:#04x}, which takes none")]
    BadPendingCommand {
        /// The command in the state.
        command: u8,
    },
    /// A saved state waits for the parameter of a keyboard command that takes none.
    #[error(
        "the i8042 state waits for a parameter of keyboard command {command:#04x}, which \
         takes none"
    )]
    BadPendingKeyboardCommand {
        /// The keyboard command in the state.
        command: u8,
    },
    /// Raising the keyboard interrupt failed.
    #[error("cannot raise the keyboard interrupt through its event fd")]
    Interrupt(#[source] io::Error),
}

/// One byte waiting in the output buffer, and which port it came from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputByte {
    /// The byte the guest reads from the data port.
    pub value: u8,
    /// True when it came from the AUX (mouse) port, which sets status bit 5.
    pub from_aux: bool,
}

/// Everything the guest can observe of the controller and keyboard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct I8042State {
    /// The command byte (interrupt enables, port disables, system flag, translation).
    pub command_byte: u8,
    /// The output port (reset line, A20 gate).
    pub output_port: u8,
    /// Whether the last write went to the command port (status bit 3).
    pub last_write_was_command: bool,
    /// A controller command still waiting for its data byte.
    pub pending_command: Option<u8>,
    /// A keyboard command still waiting for its parameter byte.
    pub pending_keyboard_command: Option<u8>,
    /// Bytes for the guest to read, oldest first.
    pub output: Vec<OutputByte>,
}

/// The i8042 controller and its keyboard.
pub struct I8042 {
    command_byte: u8,
    output_port: u8,
    last_write_was_command: bool,
    pending_command: Option<u8>,
    pending_keyboard_command: Option<u8>,
    output: VecDeque<OutputByte>,
    kbd_irq: EventFd,
    reset: EventFd,
}

impl I8042 {
    /// Creates the controller as firmware leaves it. `kbd_irq` is the event fd the VMM
    /// registers as the irqfd of [`I8042_KBD_IRQ`]; `reset` is signalled when the guest
    /// pulses the CPU reset line.
    pub fn new(kbd_irq: EventFd, reset: EventFd) -> Self {
        Self {
            command_byte: DEFAULT_COMMAND_BYTE,
            output_port: DEFAULT_OUTPUT_PORT,
            last_write_was_command: false,
            pending_command: None,
            pending_keyboard_command: None,
            output: VecDeque::new(),
            kbd_irq,
            reset,
        }
    }

    /// Rebuilds the controller from `state`. If a keyboard byte is waiting with the
    /// keyboard interrupt enabled, the interrupt is raised again: the one raised before
    /// the snapshot may not have reached the saved interrupt controller, and a
    /// spurious one only makes the guest's handler find the byte sooner.
    pub fn restore(
        kbd_irq: EventFd,
        reset: EventFd,
        state: &I8042State,
    ) -> Result<Self, I8042Error> {
        validate(state)?;
        let mut dev = Self::new(kbd_irq, reset);
        dev.command_byte = state.command_byte;
        dev.output_port = state.output_port;
        dev.last_write_was_command = state.last_write_was_command;
        dev.pending_command = state.pending_command;
        dev.pending_keyboard_command = state.pending_keyboard_command;
        dev.output = state.output.iter().copied().collect();
        dev.announce_head().map_err(I8042Error::Interrupt)?;
        Ok(dev)
    }

    /// Captures the controller's registers and queued output.
    pub fn save(&self) -> I8042State {
        I8042State {
            command_byte: self.command_byte,
            output_port: self.output_port,
            last_write_was_command: self.last_write_was_command,
            pending_command: self.pending_command,
            pending_keyboard_command: self.pending_keyboard_command,
            output: self.output.iter().copied().collect(),
        }
    }

    fn status(&self) -> u8 {
        let mut status = SR_NOT_LOCKED;
        if let Some(head) = self.output.front() {
            status |= SR_OUTPUT_FULL;
            if head.from_aux {
                status |= SR_AUX_DATA;
            }
        }
        if self.command_byte & CB_SYSTEM != 0 {
            status |= SR_SYSTEM;
        }
        if self.last_write_was_command {
            status |= SR_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        let Some(byte) = self.output.pop_front() else {
            return 0;
        };
        self.announce_head_logged();
        byte.value
    }

    fn push(&mut self, value: u8, from_aux: bool) {
        if self.output.len() == OUTPUT_QUEUE_SIZE {
            debug!("i8042: output queue full, byte {value:#04x} dropped");
            return;
        }
        self.output.push_back(OutputByte { value, from_aux });
        if self.output.len() == 1 {
            self.announce_head_logged();
        }
    }

    /// Raises the keyboard interrupt if the byte now visible to the guest is a keyboard
    /// byte and the command byte enables the interrupt. AUX bytes raise nothing: there
    /// is no IRQ 12 line (see the module documentation).
    fn announce_head(&self) -> io::Result<()> {
        match self.output.front() {
            Some(head) if !head.from_aux && self.command_byte & CB_KBD_INT != 0 => {
                self.kbd_irq.write(1)
            }
            _ => Ok(()),
        }
    }

    fn announce_head_logged(&self) {
        if let Err(e) = self.announce_head() {
            warn!("i8042: cannot raise the keyboard interrupt: {e}");
        }
    }

    fn pulse_reset(&self) {
        info!("i8042: guest pulsed the reset line");
        if let Err(e) = self.reset.write(1) {
            warn!("i8042: cannot signal the reset event: {e}");
        }
    }

    fn write_command(&mut self, command: u8) {
        self.last_write_was_command = true;
        self.pending_command = None;
        match command {
            CMD_READ_COMMAND_BYTE => self.push(self.command_byte, false),
            CMD_DISABLE_AUX => self.command_byte |= CB_AUX_DISABLED,
            CMD_ENABLE_AUX => self.command_byte &= !CB_AUX_DISABLED,
            CMD_TEST_AUX | CMD_TEST_KBD => self.push(INTERFACE_TEST_PASSED, false),
            CMD_SELF_TEST => {
                self.command_byte |= CB_SYSTEM;
                self.push(SELF_TEST_PASSED, false);
            }
            CMD_DISABLE_KBD => self.command_byte |= CB_KBD_DISABLED,
            CMD_ENABLE_KBD => self.command_byte &= !CB_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.push(self.output_port, false),
            // 0xf0-0xff pulse the output-port lines whose bits are clear in the low nibble;
            // only bit 0, the reset line, is wired to anything.
            0xf0..=0xff if command & OP_RESET_HIGH == 0 => self.pulse_reset(),
            0xf0..=0xff => {}
            c if COMMANDS_WITH_DATA.contains(&c) => self.pending_command = Some(c),
            c => debug!("i8042: unsupported controller command {c:#04x} ignored"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_write_was_command = false;
        match self.pending_command.take() {
            Some(command) => self.command_data(command, value),
            None => self.keyboard_byte(value),
        }
    }

    fn command_data(&mut self, command: u8, value: u8) {
        match command {
            CMD_WRITE_COMMAND_BYTE => {
                let enabled = value & !self.command_byte & CB_KBD_INT != 0;
                self.command_byte = value;
                if enabled {
                    self.announce_head_logged();
                }
            }
            CMD_WRITE_OUTPUT_PORT => {
                self.output_port = value;
                if value & OP_RESET_HIGH == 0 {
                    self.pulse_reset();
                }
            }
            CMD_WRITE_KBD_OUTPUT => self.push(value, false),
            CMD_WRITE_AUX_OUTPUT => self.push(value, true),
            _ => debug!("i8042: byte {value:#04x} for the absent mouse dropped"),
        }
    }

    /// A byte the guest sends to the keyboard: a command or a command's parameter.
    fn keyboard_byte(&mut self, value: u8) {
        if let Some(command) = self.pending_keyboard_command.take() {
            self.push(KBD_ACK, false);
            if command == KBD_SCAN_CODE_SET && value == 0 {
                self.push(KBD_CURRENT_SET, false);
            }
            return;
        }
        match value {
            KBD_ECHO => self.push(KBD_ECHO, false),
            KBD_RESET => {
                self.push(KBD_ACK, false);
                self.push(KBD_SELF_TEST_PASSED, false);
            }
            KBD_IDENTIFY => {
                self.push(KBD_ACK, false);
                KBD_ID.iter().for_each(|&b| self.push(b, false));
            }
            c if KBD_COMMANDS_WITH_PARAM.contains(&c) => {
                self.pending_keyboard_command = Some(c);
                self.push(KBD_ACK, false);
            }
            0xf4..=0xfe => self.push(KBD_ACK, false),
            c => {
                debug!("i8042: unknown keyboard command {c:#04x}");
                self.push(KBD_RESEND, false);
            }
        }
    }
}

fn validate(state: &I8042State) -> Result<(), I8042Error> {
    if state.output.len() > OUTPUT_QUEUE_SIZE {
        return Err(I8042Error::OutputOverflow {
            len: state.output.len(),
        });
    }
    if let Some(command) = state
        .pending_command
        .filter(|c| !COMMANDS_WITH_DATA.contains(c))
    {
        return Err(I8042Error::BadPendingCommand { command });
    }
    let kbd = state.pending_keyboard_command;
    if let Some(command) = kbd.filter(|c| !KBD_COMMANDS_WITH_PARAM.contains(c)) {
        return Err(I8042Error::BadPendingKeyboardCommand { command });
    }
    Ok(())
}

impl PioDevice for I8042 {
    fn name(&self) -> &str {
        "i8042"
    }

    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_PORT => self.read_data(),
            COMMAND_PORT => self.status(),
            _ => 0xff,
        };
        data[1..].fill(0xff);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data.first()) {
            (DATA_PORT, Some(&value)) => self.write_data(value),
            (COMMAND_PORT, Some(&value)) => self.write_command(value),
            _ => debug!("i8042: write at offset {offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    struct Rig {
        dev: I8042,
        irq: EventFd,
        reset: EventFd,
    }

    impl Rig {
        fn new() -> Self {
            let irq = EventFd::new(EFD_NONBLOCK).unwrap();
            let reset = EventFd::new(EFD_NONBLOCK).unwrap();
            let dev = I8042::new(irq.try_clone().unwrap(), reset.try_clone().unwrap());
            Self { dev, irq, reset }
        }

        fn restored(&self) -> Self {
            let irq = EventFd::new(EFD_NONBLOCK).unwrap();
            let reset = EventFd::new(EFD_NONBLOCK).unwrap();
            let (i, r) = (irq.try_clone().unwrap(), reset.try_clone().unwrap());
            let dev = I8042::restore(i, r, &self.dev.save()).unwrap();
            Self { dev, irq, reset }
        }

        fn command(&mut self, command: u8) {
            self.dev.write(COMMAND_PORT, &[command]);
        }

        fn data(&mut self, value: u8) {
            self.dev.write(DATA_PORT, &[value]);
        }

        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(COMMAND_PORT, &mut b);
            b[0]
        }

        /// Reads the data port the way Linux does: only while the status says full.
        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.status() & SR_OUTPUT_FULL != 0 {
                let mut b = [0];
                self.dev.read(DATA_PORT, &mut b);
                out.push(b[0]);
            }
            out
        }

        fn irq_count(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }
    }

    #[test]
    fn linux_probe_sequence_answers_at_once() {
        let mut r = Rig::new();
        assert_eq!(
            r.drain(),
            Vec::<u8>::new(),
            "flush must find an empty buffer"
        );
        r.command(CMD_SELF_TEST);
        assert_eq!(r.drain(), [SELF_TEST_PASSED]);
        r.command(CMD_READ_COMMAND_BYTE);
        assert_eq!(r.drain(), [DEFAULT_COMMAND_BYTE]);
        r.command(CMD_WRITE_COMMAND_BYTE);
        r.data(DEFAULT_COMMAND_BYTE | CB_KBD_DISABLED);
        r.command(CMD_READ_COMMAND_BYTE);
        assert_eq!(r.drain(), [DEFAULT_COMMAND_BYTE | CB_KBD_DISABLED]);
        r.command(CMD_TEST_KBD);
        r.command(CMD_TEST_AUX);
        assert_eq!(r.drain(), [0, 0]);
        r.command(CMD_ENABLE_KBD);
        r.command(CMD_ENABLE_AUX);
        r.command(CMD_READ_COMMAND_BYTE);
        assert_eq!(r.drain(), [DEFAULT_COMMAND_BYTE & !CB_AUX_DISABLED]);
        r.command(CMD_DISABLE_AUX);
        r.command(CMD_DISABLE_KBD);
        r.command(CMD_READ_COMMAND_BYTE);
        assert_eq!(r.drain(), [DEFAULT_COMMAND_BYTE | CB_KBD_DISABLED]);
    }

    #[test]
    fn status_reports_command_writes_system_flag_and_aux_data() {
        let mut r = Rig::new();
        assert_eq!(r.status(), SR_NOT_LOCKED | SR_SYSTEM);
        r.command(CMD_WRITE_AUX_OUTPUT);
        assert_eq!(r.status() & SR_LAST_WAS_COMMAND, SR_LAST_WAS_COMMAND);
        r.data(0x5a);
        let status = r.status();
        assert_eq!(status & (SR_LAST_WAS_COMMAND | SR_AUX_DATA), SR_AUX_DATA);
        assert_eq!(r.drain(), [0x5a]);
        assert_eq!(
            r.irq_count(),
            0,
            "AUX data must not raise the keyboard interrupt"
        );
    }

    #[test]
    fn keyboard_answers_probe_commands() {
        let mut r = Rig::new();
        r.data(KBD_IDENTIFY);
        assert_eq!(r.drain(), [KBD_ACK, 0xab, 0x83]);
        r.data(KBD_RESET);
        assert_eq!(r.drain(), [KBD_ACK, KBD_SELF_TEST_PASSED]);
        r.data(KBD_SET_LEDS);
        r.data(0x07);
        assert_eq!(r.drain(), [KBD_ACK, KBD_ACK]);
        r.data(KBD_SCAN_CODE_SET);
        r.data(0);
        assert_eq!(r.drain(), [KBD_ACK, KBD_ACK, KBD_CURRENT_SET]);
        r.data(KBD_ECHO);
        r.data(0x42);
        assert_eq!(r.drain(), [KBD_ECHO, KBD_RESEND]);
    }

    #[test]
    fn keyboard_interrupt_follows_the_command_byte() {
        let mut r = Rig::new();
        r.data(KBD_IDENTIFY);
        assert_eq!(r.irq_count(), 1, "first byte must raise IRQ 1");
        r.drain();
        assert_eq!(r.irq_count(), 2, "each next visible byte raises it again");

        r.command(CMD_WRITE_COMMAND_BYTE);
        r.data(DEFAULT_COMMAND_BYTE & !CB_KBD_INT);
        r.data(KBD_ECHO);
        assert_eq!(
            r.irq_count(),
            0,
            "raised while disabled in the command byte"
        );
        r.command(CMD_WRITE_COMMAND_BYTE);
        r.data(DEFAULT_COMMAND_BYTE);
        assert_eq!(
            r.irq_count(),
            1,
            "enabling with a byte waiting must raise it"
        );
    }

    #[test]
    fn reset_pulses_signal_the_reset_event() {
        let mut r = Rig::new();
        r.command(0xff);
        assert!(r.reset.read().is_err(), "0xff pulses no line");
        r.command(0xfe);
        assert_eq!(r.reset.read().unwrap(), 1);
        r.command(CMD_WRITE_OUTPUT_PORT);
        r.data(DEFAULT_OUTPUT_PORT & !OP_RESET_HIGH);
        assert_eq!(r.reset.read().unwrap(), 1);
    }

    #[test]
    fn save_restore_save_is_stable() {
        let mut r = Rig::new();
        r.command(CMD_WRITE_COMMAND_BYTE);
        r.data(0x47);
        r.data(KBD_IDENTIFY);
        r.data(KBD_TYPEMATIC);
        r.command(CMD_WRITE_OUTPUT_PORT);
        let saved = r.dev.save();
        assert_eq!(r.restored().dev.save(), saved);

        let mut buf = Vec::new();
        ciborium::into_writer(&saved, &mut buf).unwrap();
        let decoded: I8042State = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(decoded, saved);
    }

    #[test]
    fn restored_controller_keeps_command_byte_queue_and_reset_line() {
        let mut r = Rig::new();
        r.command(CMD_WRITE_COMMAND_BYTE);
        r.data(0x47);
        r.data(KBD_IDENTIFY);
        r.irq_count();
        let mut restored = r.restored();
        assert_eq!(
            restored.irq_count(),
            1,
            "waiting keyboard byte must re-raise IRQ 1"
        );
        assert_eq!(restored.drain(), [KBD_ACK, 0xab, 0x83]);
        restored.command(CMD_READ_COMMAND_BYTE);
        assert_eq!(restored.drain(), [0x47]);
        restored.command(0xfe);
        assert_eq!(restored.reset.read().unwrap(), 1);
    }

    #[test]
    fn restored_controller_finishes_a_pending_command() {
        let mut r = Rig::new();
        r.command(CMD_WRITE_COMMAND_BYTE);
        let mut restored = r.restored();
        assert_eq!(restored.irq_count(), 0, "nothing waiting, nothing to raise");
        restored.data(0x03);
        restored.command(CMD_READ_COMMAND_BYTE);
        assert_eq!(restored.drain(), [0x03]);
    }

    #[test]
    fn restore_refuses_inconsistent_states() {
        let r = Rig::new();
        let mut state = r.dev.save();
        state.pending_command = Some(CMD_SELF_TEST);
        let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
        let err = I8042::restore(evt(), evt(), &state).err().unwrap();
        assert!(matches!(
            err,
            I8042Error::BadPendingCommand {
                command: CMD_SELF_TEST
            }
        ));

        let mut state = r.dev.save();
        state.output = vec![
            OutputByte {
                value: 0,
                from_aux: false
            };
            OUTPUT_QUEUE_SIZE + 1
        ];
        let err = I8042::restore(evt(), evt(), &state).err().unwrap();
        assert!(matches!(err, I8042Error::OutputOverflow { .. }));
    }
}
