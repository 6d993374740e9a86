//! COM1: vm-superio's 16550A model on ports 0x3f8–0x3ff, IRQ 4 through an irqfd.
//! Output goes to the non-blocking [`crate::devices::console`]; input is fed by the event loop
//! from stdin, which pauses while the UART's FIFO is full and resumes on `in_buffer_empty`.

use std::io;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::console::ConsoleWriter;

/// Raises the UART's interrupt by signalling an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop when the guest has drained the receive FIFO.
#[derive(Debug)]
pub struct SerialInputEvents {
    pub in_buffer_empty: EventFd,
}

impl SerialEvents for SerialInputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.in_buffer_empty.write(1);
    }
}

/// The UART on the port I/O bus.
#[derive(Debug)]
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, SerialInputEvents, ConsoleWriter>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, in_buffer_empty: EventFd, out: ConsoleWriter) -> Self {
        Self {
            serial: Serial::with_events(
                EventFdTrigger(interrupt),
                SerialInputEvents { in_buffer_empty },
                out,
            ),
        }
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues input bytes for the guest; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// The eventfd the UART signals when its FIFO becomes empty.
    pub fn in_buffer_empty_fd(&self) -> &EventFd {
        &self.serial.events().in_buffer_empty
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) {
            // A failed interrupt or output write is not the guest's problem: the console
            // writer never fails and an eventfd write only fails on counter overflow.
            let _ = self.serial.write(off, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::tests::Buf;
    use crate::devices::console::Console;
    use crate::seccomp::Filters;
    use std::time::Duration;

    fn efd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;

    #[test]
    fn transmits_to_console_and_interrupts() {
        let out = Buf::default();
        let (console, writer) =
            Console::spawn(vec![Box::new(out.clone())], 1024, &Filters::disabled()).expect("spawn");
        let irq = efd();
        let irq_probe = irq.try_clone().expect("clone");
        let mut dev = SerialDevice::new(irq, efd(), writer);
        // Enable the THR-empty interrupt, then send.
        dev.write(IER, &[0x02]);
        for b in b"boot ok\n" {
            dev.write(THR, &[*b]);
        }
        assert!(irq_probe.read().expect("interrupt raised") >= 1);
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        console.flush_and_stop(Duration::from_secs(5));
        assert_eq!(&*out.0.lock().expect("lock"), b"boot ok\n");
    }

    #[test]
    fn receives_input_and_reports_empty_fifo() {
        let (_console, writer) = Console::spawn(vec![], 16, &Filters::disabled()).expect("spawn");
        let empty = efd();
        let empty_probe = empty.try_clone().expect("clone");
        let mut dev = SerialDevice::new(efd(), empty, writer);
        dev.write(IER, &[0x01]); // received-data interrupt
        let cap = dev.fifo_capacity();
        assert_eq!(dev.enqueue_input(b"ls\n"), 3);
        assert_eq!(dev.fifo_capacity(), cap - 3);
        let mut iir = [0u8];
        dev.read(IIR, &mut iir);
        assert_eq!(iir[0] & 0x0f, 0x04, "received data available");
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut b = [0u8];
            dev.read(THR, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ls\n");
        assert!(empty_probe.read().expect("in_buffer_empty signalled") >= 1);
    }
}
