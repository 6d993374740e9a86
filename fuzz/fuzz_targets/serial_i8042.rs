//! A guest's port I/O into the VMM's port bus: the UART, the i8042 and the ACPI port (outsock_vmm::devices::fuzz::ports_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_vmm::devices::fuzz::ports_one(data);
});
