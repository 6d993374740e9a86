//! The i8042 keyboard controller with an AT keyboard behind it: enough for Linux's `i8042` and
//! `atkbd` drivers to find a keyboard, so that the VMM can press Ctrl+Alt+Del to ask the guest
//! to shut down (what Firecracker's `SendCtrlAltDel` does; see [`crate::graceful_stop`]), and
//! the controller's "pulse reset line" command (0xFE on port 0x64, `reboot=k` and the fallback
//! of `reboot=a`) still ends the VM with [`ExitReason::Reboot`].
//!
//! How the guest finds it: the DSDT has a `PNP0303` node with I/O ports 0x60 and 0x64 and
//! GSI 1 (`arch::x86_64::acpi`). The FADT's IA-PC "8042" boot flag stays clear: Linux then
//! marks the controller "firmware absent" (`arch/x86/kernel/acpi/boot.c`), so
//! `i8042_pnp_init` (`drivers/input/serio/i8042-acpipnpio.h`) probes only because the PNP node
//! exists, and takes the keyboard IRQ from its `_CRS` — which it must: a hardware-reduced FADT
//! leaves Linux no legacy ISA IRQ table. The node has no PS/2 mouse sibling (`PNP0F13`), so
//! the driver sets `i8042_noaux` ("PS/2 appears to have AUX port disabled") and never waits on
//! aux-port commands. With `i8042.nopnp` it would probe the ports anyway and ask about the aux
//! port: the aux interface test answers 0x01 ("clock line stuck low": no aux port).
//!
//! The controller: a status register (output-buffer-full, system flag, last write was a
//! command, keyboard not inhibited), a command byte, a one-byte output buffer fed from a
//! bounded keyboard queue, and the commands Linux sends (read/write command byte, self test
//! 0xAA → 0x55, keyboard interface test 0xAB → 0x00, disable/enable keyboard 0xAD/0xAE, output
//! port 0xD0/0xD1, write keyboard output 0xD2, pulse output lines 0xF0–0xFF). Input is never
//! held (the input-buffer-full bit is always clear): each write is handled at once.
//!
//! The keyboard answers commands written to port 0x60 with ACK (0xFA) and the usual replies:
//! reset 0xFF → 0xFA 0xAA, identify 0xF2 → 0xFA 0xAB 0x83, echo, set LEDs / typematic rate /
//! scan code set with their parameter bytes, enable/disable scanning; anything else → 0xFE
//! (resend). Each byte the keyboard puts in the output buffer raises IRQ 1 when the command
//! byte's keyboard-interrupt bit is set; controller replies raise none (Linux reads them by
//! polling, with the keyboard interrupt off).
//!
//! Scan codes: the command byte starts as 0x05 (keyboard interrupt, system flag, *no*
//! translation), as Firecracker's. Linux's `i8042_controller_init` then keeps translation off
//! (`i8042_direct`) and `atkbd` reads raw scan code set 2 (`atkbd_select_set` returns 2 without
//! asking the keyboard). A guest that turns translation on gets set 1 codes, which is what
//! atkbd's translated mode expects.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::vm_exit::{ExitReason, ExitSignal};

/// Port offsets on the bus (base 0x60).
const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Status register bits.
const STR_OBF: u8 = 0x01;
const STR_SYS: u8 = 0x04;
const STR_CMD: u8 = 0x08;
const STR_KEYLOCK: u8 = 0x10;

/// Command byte ("controller configuration byte") bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
const CTR_INITIAL: u8 = CTR_KBDINT | CTR_SYS;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_RESEND: u8 = 0xfe;
const KBD_ECHO: u8 = 0xee;

/// Bytes the keyboard may hold for the guest; more are dropped (a guest that never reads).
const KBD_QUEUE_MAX: usize = 32;

/// Ctrl, Alt, Delete pressed, then released in reverse order: scan code set 2 (raw), with
/// 0xE0 for the extended Delete key and 0xF0 before each break code.
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// The same in set 1 (what the controller's translation produces): break = make | 0x80.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// A byte in the output buffer, and whether the keyboard sent it (or the controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Output {
    byte: u8,
    from_keyboard: bool,
}

/// The AT keyboard's own state.
#[derive(Debug)]
struct Keyboard {
    /// A command that waits for its parameter byte (0xED, 0xF0, 0xF3).
    awaiting: Option<u8>,
    /// Whether it sends key codes (0xF4 enables, 0xF5 disables, reset enables).
    scanning: bool,
    scan_set: u8,
}

/// The controller and its keyboard.
#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    output_port: u8,
    out: Option<Output>,
    /// What the keyboard sent that is not in the output buffer yet.
    kbd_queue: VecDeque<u8>,
    /// A controller command that waits for its data byte (0x60–0x7F, 0xD1–0xD4).
    awaiting: Option<u8>,
    last_write_was_command: bool,
    /// The last byte read from port 0x60 (what a read with an empty buffer returns).
    last_read: u8,
    kbd: Keyboard,
    /// Registered as the irqfd of GSI 1.
    irq: EventFd,
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that raises IRQ 1 through `irq` and reports a reset request to `exit`.
    pub fn new(irq: EventFd, exit: Arc<ExitSignal>) -> Self {
        Self {
            ctr: CTR_INITIAL,
            // Reset line inactive (bit 0) and A20 on (bit 1).
            output_port: 0x03,
            out: None,
            kbd_queue: VecDeque::new(),
            awaiting: None,
            last_write_was_command: false,
            last_read: 0,
            kbd: Keyboard {
                awaiting: None,
                scanning: true,
                scan_set: 2,
            },
            irq,
            exit,
        }
    }

    /// Presses and releases Ctrl+Alt+Del. Returns false, sending nothing, when the guest has
    /// not enabled the keyboard (no driver yet, or it turned scanning off): keys would be lost
    /// or would confuse a driver in the middle of probing.
    pub fn ctrl_alt_del(&mut self) -> bool {
        if !self.kbd.scanning || self.ctr & CTR_KBDDIS != 0 {
            return false;
        }
        let codes: &[u8] = if self.ctr & CTR_XLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        for &b in codes {
            self.keyboard_sends(b);
        }
        self.pump();
        true
    }

    fn status(&self) -> u8 {
        let mut s = STR_KEYLOCK;
        if self.out.is_some() {
            s |= STR_OBF;
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STR_SYS;
        }
        if self.last_write_was_command {
            s |= STR_CMD;
        }
        s
    }

    fn raise_irq(&self) {
        if self.ctr & CTR_KBDINT != 0 {
            // A full eventfd counter still means "interrupt pending": nothing to do on error.
            let _ = self.irq.write(1);
        }
    }

    /// Moves the keyboard's next byte into an empty output buffer (interface enabled).
    fn pump(&mut self) {
        if self.out.is_some() || self.ctr & CTR_KBDDIS != 0 {
            return;
        }
        if let Some(byte) = self.kbd_queue.pop_front() {
            self.out = Some(Output {
                byte,
                from_keyboard: true,
            });
            self.raise_irq();
        }
    }

    fn keyboard_sends(&mut self, byte: u8) {
        if self.kbd_queue.len() < KBD_QUEUE_MAX {
            self.kbd_queue.push_back(byte);
        }
    }

    /// A controller reply goes before anything the keyboard sent.
    fn reply(&mut self, byte: u8) {
        if let Some(Output {
            byte: k,
            from_keyboard: true,
        }) = self.out
        {
            if self.kbd_queue.len() >= KBD_QUEUE_MAX {
                self.kbd_queue.pop_back();
            }
            self.kbd_queue.push_front(k);
        }
        self.out = Some(Output {
            byte,
            from_keyboard: false,
        });
    }

    fn set_command_byte(&mut self, ctr: u8) {
        let irq_was_on = self.ctr & CTR_KBDINT != 0;
        self.ctr = ctr;
        // A keyboard byte already waiting interrupts once the interrupt is turned on.
        if !irq_was_on && matches!(self.out, Some(o) if o.from_keyboard) {
            self.raise_irq();
        }
        self.pump();
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_write_was_command = true;
        self.awaiting = None;
        match cmd {
            0x20 => self.reply(self.ctr),
            // Internal RAM beyond the command byte (nothing stored), keyboard interface test
            // (0x00: no error), input port, test inputs.
            0x21..=0x3f | 0xab | 0xc0 | 0xe0 => self.reply(0),
            0x60..=0x7f | 0xd1..=0xd4 => self.awaiting = Some(cmd),
            0xa7 => self.ctr |= CTR_AUXDIS,
            // No aux port: its interface test says "clock line stuck low"; enabling it (0xA8)
            // changes nothing.
            0xa9 => self.reply(0x01),
            0xaa => self.reply(0x55),
            0xad => self.ctr |= CTR_KBDDIS,
            0xae => {
                self.ctr &= !CTR_KBDDIS;
                self.pump();
            }
            0xd0 => self.reply(self.output_port),
            // Pulse output lines for 6 µs: bits 0–3 low select the lines, bit 0 is reset.
            0xf0..=0xff if cmd & 0x01 == 0 => self.exit.signal(ExitReason::Reboot),
            _ => {}
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.last_write_was_command = false;
        match self.awaiting.take() {
            Some(0x60) => self.set_command_byte(byte),
            Some(0xd1) => self.output_port = byte,
            Some(0xd2) => {
                self.keyboard_sends(byte);
                self.pump();
            }
            // Internal RAM, and bytes for the aux port that is not there.
            Some(_) => {}
            None => {
                self.keyboard_command(byte);
                self.pump();
            }
        }
    }

    fn keyboard_command(&mut self, byte: u8) {
        // A command byte cancels a command that waits for its parameter.
        if let Some(cmd) = self.kbd.awaiting.take().filter(|_| byte < 0xed) {
            self.keyboard_sends(KBD_ACK);
            if cmd == 0xf0 {
                match byte {
                    0 => self.keyboard_sends(self.kbd.scan_set),
                    1..=3 => self.kbd.scan_set = byte,
                    _ => {}
                }
            }
            return;
        }
        match byte {
            // Set LEDs, get/set scan code set, set typematic rate: a parameter follows.
            0xed | 0xf0 | 0xf3 => {
                self.keyboard_sends(KBD_ACK);
                self.kbd.awaiting = Some(byte);
            }
            0xee => self.keyboard_sends(KBD_ECHO),
            0xf2 => {
                self.keyboard_sends(KBD_ACK);
                self.keyboard_sends(0xab);
                // What a real keyboard's 0x83 reads as through the controller's translation.
                let id = if self.ctr & CTR_XLATE != 0 {
                    0x41
                } else {
                    0x83
                };
                self.keyboard_sends(id);
            }
            0xf4 => {
                self.keyboard_sends(KBD_ACK);
                self.kbd.scanning = true;
            }
            0xf5 => {
                self.keyboard_sends(KBD_ACK);
                self.kbd.scanning = false;
                self.kbd.scan_set = 2;
            }
            0xf6 => {
                self.keyboard_sends(KBD_ACK);
                self.kbd.scan_set = 2;
            }
            // Set-3 key types, and resend (nothing of ours was lost).
            0xf7..=0xfe => self.keyboard_sends(KBD_ACK),
            0xff => {
                self.keyboard_sends(KBD_ACK);
                self.keyboard_sends(KBD_BAT_OK);
                self.kbd.scanning = true;
                self.kbd.scan_set = 2;
            }
            _ => self.keyboard_sends(KBD_RESEND),
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(o) = self.out.take() {
            self.last_read = o.byte;
        }
        self.pump();
        self.last_read
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            // 0x61–0x63 (system control port B and friends) are not emulated.
            _ => 0,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            DATA => self.write_data(v),
            COMMAND => self.write_command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, EventFd, Arc<ExitSignal>) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let exit = Arc::new(ExitSignal::new());
        let dev = I8042::new(irq.try_clone().expect("clone"), exit.clone());
        (dev, irq, exit)
    }

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0u8];
        d.read(COMMAND, &mut b);
        b[0]
    }

    /// Reads the output buffer the way `i8042_wait_read` does: only when OBF is set.
    fn read(d: &mut I8042) -> Option<u8> {
        if status(d) & STR_OBF == 0 {
            return None;
        }
        let mut b = [0u8];
        d.read(DATA, &mut b);
        Some(b[0])
    }

    /// `i8042_command`: command byte, its parameters to the data port, then its replies.
    fn command(d: &mut I8042, cmd: u8, params: &[u8], replies: usize) -> Vec<u8> {
        assert_eq!(status(d) & 0x02, 0, "input buffer empty");
        d.write(COMMAND, &[cmd]);
        for &p in params {
            d.write(DATA, &[p]);
        }
        (0..replies).filter_map(|_| read(d)).collect()
    }

    fn irqs(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    /// What the keyboard answers to `bytes`, read one interrupt at a time.
    fn keyboard(d: &mut I8042, irq: &EventFd, bytes: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for &b in bytes {
            d.write(DATA, &[b]);
            while irqs(irq) > 0 {
                got.push(read(d).expect("an interrupt means a byte"));
            }
        }
        assert_eq!(status(d) & STR_OBF, 0, "nothing left over");
        got
    }

    /// The probe of Linux's i8042 driver, then what atkbd sends, as in a boot.
    fn linux_probe(d: &mut I8042, irq: &EventFd) {
        // i8042_controller_check: flush.
        while read(d).is_some() {}
        // i8042_controller_selftest (reset=always) and i8042_controller_init.
        assert_eq!(command(d, 0xaa, &[], 1), [0x55]);
        let ctr = command(d, 0x20, &[], 1);
        assert_eq!(ctr, command(d, 0x20, &[], 1), "a stable CTR");
        assert_eq!(ctr, [CTR_INITIAL]);
        assert_ne!(status(d) & STR_KEYLOCK, 0, "no 'Keylock active' warning");
        let mut ctr = (ctr[0] | CTR_KBDDIS) & !CTR_KBDINT;
        // Translation is off, so the driver keeps it off (i8042_direct).
        ctr &= !CTR_XLATE;
        assert!(command(d, 0x60, &[ctr], 0).is_empty());
        // A20 through the output port, and the null command: neither resets.
        command(d, 0xd1, &[0xdf], 0);
        command(d, 0xff, &[], 0);
        // i8042_enable_kbd_port.
        ctr = (ctr & !CTR_KBDDIS) | CTR_KBDINT;
        command(d, 0x60, &[ctr], 0);
        assert_eq!(irqs(irq), 0, "controller commands raise no interrupt");
        // atkbd_probe: GETID; atkbd_activate: LEDs off, typematic rate, enable.
        assert_eq!(keyboard(d, irq, &[0xf2]), [0xfa, 0xab, 0x83]);
        assert_eq!(keyboard(d, irq, &[0xed, 0x00]), [0xfa, 0xfa]);
        assert_eq!(keyboard(d, irq, &[0xf3, 0x00]), [0xfa, 0xfa]);
        assert_eq!(keyboard(d, irq, &[0xf4]), [0xfa]);
        assert!(!d.exit.is_signalled());
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, irq, _) = device();
        linux_probe(&mut d, &irq);
        assert_eq!(command(&mut d, 0xab, &[], 1), [0x00], "kbd interface test");
        assert_eq!(keyboard(&mut d, &irq, &[0xff]), [0xfa, 0xaa], "reset");
        assert_eq!(keyboard(&mut d, &irq, &[0xee]), [0xee], "echo");
        assert_eq!(keyboard(&mut d, &irq, &[0xf0, 0x00]), [0xfa, 0xfa, 0x02]);
        assert_eq!(keyboard(&mut d, &irq, &[0x42]), [0xfe], "unknown command");
    }

    #[test]
    fn ctrl_alt_del_is_set2_one_interrupt_per_byte() {
        let (mut d, irq, _) = device();
        linux_probe(&mut d, &irq);
        assert!(d.ctrl_alt_del());
        let mut got = Vec::new();
        while irqs(&irq) == 1 {
            got.push(read(&mut d).expect("a byte per interrupt"));
        }
        assert_eq!(got, CTRL_ALT_DEL_SET2);
        assert_eq!(read(&mut d), None);
    }

    #[test]
    fn ctrl_alt_del_translated_is_set1() {
        let (mut d, irq, _) = device();
        linux_probe(&mut d, &irq);
        command(&mut d, 0x60, &[CTR_KBDINT | CTR_SYS | CTR_XLATE], 0);
        assert_eq!(keyboard(&mut d, &irq, &[0xf2]), [0xfa, 0xab, 0x41]);
        assert!(d.ctrl_alt_del());
        let mut got = Vec::new();
        while irqs(&irq) == 1 {
            got.push(read(&mut d).expect("a byte per interrupt"));
        }
        assert_eq!(got, CTRL_ALT_DEL_SET1);
    }

    #[test]
    fn no_keys_before_the_driver_enables_the_keyboard() {
        let (mut d, irq, _) = device();
        command(&mut d, 0x60, &[CTR_SYS | CTR_KBDDIS], 0);
        assert!(!d.ctrl_alt_del(), "interface disabled");
        command(&mut d, 0xae, &[], 0);
        d.write(DATA, &[0xf5]);
        assert_eq!(irqs(&irq), 0, "interrupt off: polled");
        assert_eq!(read(&mut d), Some(0xfa));
        assert!(!d.ctrl_alt_del(), "scanning disabled");
        assert_eq!(read(&mut d), None);
    }

    #[test]
    fn interrupt_when_enabled_with_a_byte_waiting_and_replies_go_first() {
        let (mut d, irq, _) = device();
        command(&mut d, 0x60, &[CTR_SYS], 0);
        d.write(DATA, &[0xee]);
        assert_eq!(irqs(&irq), 0);
        // A controller reply displaces the keyboard byte, which comes next.
        assert_eq!(command(&mut d, 0x20, &[], 1), [CTR_SYS]);
        command(&mut d, 0x60, &[CTR_SYS | CTR_KBDINT], 0);
        assert_eq!(irqs(&irq), 1);
        assert_eq!(read(&mut d), Some(0xee));
    }

    #[test]
    fn reset_command_reboots() {
        let (mut d, _, exit) = device();
        assert_eq!(
            status(&mut d) & 0x02,
            0,
            "input buffer empty: kb_wait() returns"
        );
        d.write(COMMAND, &[0xd1]);
        d.write(COMMAND, &[0xff]);
        assert!(!exit.is_signalled());
        d.write(COMMAND, &[0xfe]);
        assert_eq!(exit.wait(), ExitReason::Reboot);
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded() {
        let (mut d, irq, _) = device();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..100_000 {
            // xorshift: every port, every byte value, in any order.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let [a, b, c, _] = x.to_le_bytes();
            let offset = u64::from(a % 6);
            let mut buf = [0u8; 2];
            match b % 3 {
                0 => d.read(offset, &mut buf),
                1 => d.write(offset, &[c]),
                _ => {
                    let _ = d.ctrl_alt_del();
                }
            }
            d.write(offset, &[]);
            assert!(d.kbd_queue.len() <= KBD_QUEUE_MAX);
        }
        let _ = irqs(&irq);
    }
}
