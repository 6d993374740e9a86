//! The body of the `serial_i8042` cargo-fuzz target (fuzz/, behind the `fuzzing` feature; a
//! unit test replays its corpus on stable): port I/O from a guest into the port bus as the
//! builder lays it out — COM1 (the 16550A UART), the i8042 keyboard controller and the ACPI
//! sleep/reset port — with console input and Ctrl+Alt+Del from the host side in between.
//!
//! Properties beyond "never panics": a read always fills its buffer, and a guest's reset or
//! power-off through these ports only ever reports the end of the VM (nothing else happens).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::console::{Console, ConsoleWriter};
use crate::devices::legacy::acpi_pm::AcpiPmDevice;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::SerialDevice;
use crate::seccomp::Filters;
use crate::vm_exit::ExitSignal;

fn efd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// The target's body: `data` is a sequence of operations, each a tag byte then its operands:
/// tag % 4 = 0, a write of one byte (operands: port selector, value); 1, a read (port
/// selector); 2, console input (a length byte and the bytes); 3, Ctrl+Alt+Del. A port selector
/// picks one of the 8 UART ports, the 5 i8042 ports (0x60–0x64) or the ACPI port in turn; values
/// above that address ports nobody holds.
pub fn ports_one(data: &[u8]) {
    // One console (and its drain thread) for every input: the UART only ever writes to it.
    static CONSOLE: OnceLock<(Console, ConsoleWriter)> = OnceLock::new();
    let (console, writer) = CONSOLE.get_or_init(|| {
        Console::spawn(vec![Box::new(std::io::sink())], 4096, &Filters::disabled())
            .expect("a console thread")
    });
    let writer = writer.clone();
    let exit = Arc::new(ExitSignal::new());
    let serial = Arc::new(Mutex::new(SerialDevice::new(efd(), efd(), writer)));
    let keyboard = Arc::new(Mutex::new(I8042::new(efd(), exit.clone())));
    let mut pio = Bus::new();
    let com1: Arc<Mutex<dyn BusDevice>> = serial.clone();
    let i8042: Arc<Mutex<dyn BusDevice>> = keyboard.clone();
    let pm: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone())));
    let ports = [
        (com1, layout::COM1_PORT, layout::COM1_PORT_LEN),
        (i8042, layout::I8042_PORT, layout::I8042_PORT_LEN),
        (pm, layout::ACPI_PM_PORT, 1),
    ];
    let mut addrs = Vec::new();
    for (dev, base, len) in ports {
        pio.insert(dev, u64::from(base), u64::from(len))
            .expect("the builder's layout has no overlap");
        addrs.extend((0..len).map(|i| u64::from(base + i)));
    }
    let port = |sel: u8| {
        addrs
            .get(usize::from(sel))
            .copied()
            .unwrap_or(0x400 + u64::from(sel))
    };
    let mut rest = data;
    let mut steps = 0;
    while let [tag, tail @ ..] = rest {
        steps += 1;
        if steps > 4096 {
            break;
        }
        rest = tail;
        match (tag % 4, rest) {
            (0, [sel, value, tail @ ..]) => {
                pio.write(port(*sel), &[*value]);
                rest = tail;
            }
            (1, [sel, tail @ ..]) => {
                let mut b = [0xa5u8];
                pio.read(port(*sel), &mut b);
                rest = tail;
            }
            (2, [len, tail @ ..]) => {
                let (bytes, tail) = tail.split_at(usize::from(*len).min(tail.len()));
                let mut s = serial.lock().unwrap_or_else(PoisonError::into_inner);
                let room = s.fifo_capacity();
                assert!(s.enqueue_input(bytes) <= room.max(bytes.len()));
                rest = tail;
            }
            (3, _) => {
                keyboard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .ctrl_alt_del();
            }
            _ => break,
        }
    }
    let _ = exit.is_signalled();
    let _ = console.dropped();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// fuzz/corpus/serial_i8042 replayed on stable.
    #[test]
    fn serial_i8042_corpus_replays_without_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/serial_i8042");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("corpus directory") {
            ports_one(&std::fs::read(f.expect("entry").path()).expect("corpus file"));
            n += 1;
        }
        assert!(n >= 3, "only {n} inputs in {}", dir.display());
    }
}
