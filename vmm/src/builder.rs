//! Builds and starts a VM. [`build_and_boot`] reads as the boot sequence: check the host,
//! allocate memory, create the VM and irqchip, load the kernel, initramfs and command line,
//! write the ACPI tables and the zero page, attach the devices (`attach_devices`; in VM mode
//! the vsock device, `attach_vsock`, whose muxer binds the VM's own socket here), configure
//! the vCPUs, and start the event thread and one thread per vCPU. Every thread it starts
//! installs its seccomp filter before it runs (`crate::seccomp`), so setup needs no allow-list
//! and the guest never runs unconfined. When it returns the guest is running: `main` filters
//! itself and tells systemd.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::{self, AcpiConfig, MmioDeviceDesc};
use crate::arch::x86_64::boot_params::{self, BootParamsConfig, SetupHeader};
use crate::arch::x86_64::{cpuid, layout, regs};
use crate::config::VmConfig;
use crate::devices::console::{self, Console};
use crate::devices::legacy::acpi_pm::AcpiPmDevice;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::pvpanic::PvPanic;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::vsock::{Muxer, MuxerConfig, VsockDevice, VsockHandler};
use crate::devices::virtio::{IrqLine, VirtioDevice};
use crate::devices::{Bus, BusDevice};
use crate::event_loop::{self, ConsoleInput, Subscriber, Watchdog};
use crate::graceful_stop::GracefulStop;
use crate::host_check;
use crate::metrics::MetricsServer;
use crate::seccomp::{Filters, Role};
use crate::vm_exit::{ExitReason, ExitSignal};
use crate::vstate::{memory, vm::Vm};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    NoHardwareKvm(String),
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel {} is not a usable bzImage", path.display())]
    Kernel {
        path: PathBuf,
        #[source]
        source: boot_params::BootParamsError,
    },
    #[error("cannot load the kernel into guest memory")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("the initramfs ({size} bytes) does not fit in {mem_mib} MiB of guest memory above the kernel")]
    InitrdTooLarge { size: u64, mem_mib: u64 },
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot build the zero page")]
    BootParams(#[source] boot_params::BootParamsError),
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot write guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    #[error("cannot place a device on the bus")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("cannot set up the vsock device")]
    Vsock(#[from] crate::devices::virtio::vsock::muxer::MuxerError),
    #[error("cannot set up an eventfd, a thread or the console")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on the metrics socket {}", path.display())]
    MetricsSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running VM. Dropping it does not stop the vCPU threads: the process ends instead.
#[derive(Debug)]
pub struct RunningVm {
    exit: Arc<ExitSignal>,
    console: Console,
    keyboard: Arc<Mutex<I8042>>,
    // Kept alive for as long as the vCPUs run (KVM holds its host addresses).
    _memory: GuestMemoryMmap,
    _vm: Vm,
}

impl RunningVm {
    /// The channel that ends the VM: whatever reports a reason on it first stops it.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        Arc::clone(&self.exit)
    }

    /// What asks this guest to shut down on a stop signal (see `graceful_stop`), or `None`
    /// when `stop_timeout` is zero: the VM then stops at once.
    pub fn graceful_stop(&self, name: &str, stop_timeout: Duration) -> Option<GracefulStop> {
        (!stop_timeout.is_zero()).then(|| {
            GracefulStop::new(
                name.to_owned(),
                Arc::clone(&self.keyboard),
                Arc::clone(&self.exit),
                stop_timeout,
            )
        })
    }

    /// Blocks until the VM ends, flushes the console (bounded), and says why it ended.
    pub fn wait(self) -> (ExitReason, u64) {
        let reason = self.exit.wait();
        let dropped = self.console.flush_and_stop(Duration::from_secs(5));
        (reason, dropped)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::ReadFile {
        path: path.into(),
        source,
    })
}

/// Builds the VM described by `cfg` and starts it, each thread confined by `filters`.
pub fn build_and_boot(cfg: &VmConfig, filters: &Filters) -> Result<RunningVm, BuildError> {
    // 1. The host must have hardware KVM; a PVM /dev/kvm cannot boot this kernel.
    let host = host_check::probe(&host_check::HostPaths::default());
    if let Some(msg) = host_check::unusable_message(&host) {
        return Err(BuildError::NoHardwareKvm(msg));
    }

    // 2. The kernel's setup header tells where things may go.
    let kernel_path = &cfg.kernel;
    let mut kernel = File::open(kernel_path).map_err(|source| BuildError::ReadFile {
        path: kernel_path.clone(),
        source,
    })?;
    let mut head = vec![0u8; 4096];
    let n = kernel
        .read(&mut head)
        .map_err(|source| BuildError::ReadFile {
            path: kernel_path.clone(),
            source,
        })?;
    head.truncate(n);
    let header = SetupHeader::parse(&head).map_err(|source| BuildError::Kernel {
        path: kernel_path.clone(),
        source,
    })?;

    // 3. Guest memory, the VM, its memory slots, and the in-kernel irqchip + PIT.
    let mem_size = cfg.mem_mib << 20;
    let mem = memory::create_guest_memory(mem_size)?;
    let vm = Vm::new()?;
    vm.register_memory(&mem)?;
    vm.setup_irqchip()?;

    // 4. Kernel at code32_start (1 MiB); its 64-bit entry is 0x200 further.
    let loaded = BzImage::load(
        &mem,
        None,
        &mut kernel,
        Some(GuestAddress(layout::HIMEM_START)),
    )
    .map_err(BuildError::LoadKernel)?;
    let entry = loaded.kernel_load.0 + 0x200;

    // 5. Initramfs as high as the protocol allows.
    let initrd = match &cfg.initramfs {
        Some(path) => {
            let bytes = read_file(path)?;
            let size = bytes.len() as u64;
            let addr = boot_params::initrd_address(mem_size, &header, size).ok_or(
                BuildError::InitrdTooLarge {
                    size,
                    mem_mib: cfg.mem_mib,
                },
            )?;
            mem.write_slice(&bytes, GuestAddress(addr))?;
            Some((addr, size))
        }
        None => None,
    };

    // 6. Command line.
    let cmdline_text = cfg.full_cmdline();
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(&cmdline_text)
        .map_err(BuildError::Cmdline)?;
    load_cmdline(&mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(BuildError::LoadCmdline)?;

    // 7. ACPI tables (devices, CPUs, sleep/reset registers).
    let vsock_socket = cfg.vsock_socket_path();
    let mut mmio_devices = vec![MmioDeviceDesc::pvpanic(layout::PVPANIC_MMIO_START as u32)];
    if vsock_socket.is_some() {
        mmio_devices.push(MmioDeviceDesc::virtio_mmio(
            0,
            layout::VIRTIO_MMIO_START as u32,
            layout::GSI_VIRTIO_START,
        ));
    }
    let acpi = acpi::build(&AcpiConfig {
        vcpus: cfg.vcpus,
        mmio_devices,
    })?;
    for (addr, bytes) in &acpi.tables {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }

    // 8. Zero page, GDT, empty IDT, identity page tables.
    let zero_page = boot_params::build_zero_page(
        &header,
        &BootParamsConfig {
            cmdline_addr: layout::CMDLINE_START,
            cmdline_len: cmdline_text.len() + 1,
            initrd,
            rsdp_addr: acpi.rsdp_addr,
            e820: boot_params::e820_map(mem_size),
        },
    )
    .map_err(BuildError::BootParams)?;
    mem.write_slice(&zero_page, GuestAddress(layout::ZERO_PAGE_START))?;
    mem.write_slice(&regs::gdt_bytes(), GuestAddress(layout::BOOT_GDT_START))?;
    mem.write_slice(&[0u8; 8], GuestAddress(layout::BOOT_IDT_START))?;
    for (addr, bytes) in regs::page_tables() {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }

    // 9. Devices: console + COM1 (IRQ 4), i8042 keyboard controller (IRQ 1), ACPI sleep/reset
    //    port, pvpanic, and in VM mode virtio-vsock.
    let Devices {
        exit,
        console,
        serial,
        keyboard,
        pio,
        mmio,
        mut subscribers,
    } = attach_devices(cfg, &vm, &mem, vsock_socket, filters)?;

    // 10. vCPUs: normalised CPUID, MSRs, registers (boot vCPU only), LAPIC LINT pins.
    let supported = vm.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
    for index in 0..cfg.vcpus {
        let vcpu = vm.create_vcpu(index)?;
        let mut leaves = supported.clone();
        cpuid::normalize(&mut leaves, index, cfg.vcpus);
        vcpu.configure(&leaves, (index == 0).then_some(entry))?;
        vcpus.push(vcpu);
    }

    // 11. The event thread (console input, vsock, systemd's watchdog) and one thread per vCPU,
    //     each filtered before its first epoll_wait or KVM_RUN.
    if cfg.stdin {
        subscribers.push(Box::new(ConsoleInput::new(ConsoleInput::stdin()?, serial)?));
    }
    if let (Some(interval), Some(socket)) = (
        outsock_notify::watchdog_interval(),
        std::env::var_os("NOTIFY_SOCKET"),
    ) {
        subscribers.push(Box::new(Watchdog::new(
            interval,
            socket.to_string_lossy().into_owned(),
        )?));
    }
    event_loop::spawn(subscribers, filters)?;
    for vcpu in vcpus {
        let (pio, mmio, exit, trace) = (pio.clone(), mmio.clone(), exit.clone(), cfg.trace_io);
        let name = format!("vcpu{}", vcpu.index());
        filters.spawn(Role::Vcpu, name, move || {
            vcpu.run(&pio, &mmio, &exit, trace);
        })?;
    }

    Ok(RunningVm {
        exit,
        console,
        keyboard,
        _memory: mem,
        _vm: vm,
    })
}

/// The devices of a VM, on its buses, and the event-loop subscribers that drive them.
struct Devices {
    /// The channel the devices (and the vCPUs) report the end of the VM on.
    exit: Arc<ExitSignal>,
    console: Console,
    /// COM1, for the console input subscriber.
    serial: Arc<Mutex<SerialDevice>>,
    /// The i8042, for a graceful stop's Ctrl+Alt+Del.
    keyboard: Arc<Mutex<I8042>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    subscribers: Vec<Subscriber>,
}

/// Step 9 of [`build_and_boot`]: starts the console (its drain thread filtered by `filters`),
/// puts COM1, the i8042, the ACPI sleep/reset port and pvpanic on the buses with their irqfds,
/// and, in VM mode (`vsock_socket`), the virtio-vsock device ([`attach_vsock`]).
fn attach_devices(
    cfg: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    vsock_socket: Option<PathBuf>,
    filters: &Filters,
) -> Result<Devices, BuildError> {
    let exit = Arc::new(ExitSignal::new());
    let mut sinks: Vec<Box<dyn Write + Send>> = vec![Box::new(std::io::stdout())];
    if let Some(path) = &cfg.serial_log {
        let f = File::create(path).map_err(|source| BuildError::ReadFile {
            path: path.clone(),
            source,
        })?;
        sinks.push(Box::new(f));
    }
    let (console, console_writer) = Console::spawn(sinks, console::DEFAULT_CAPACITY, filters)?;
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_irq, layout::COM1_GSI)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        EventFd::new(libc::EFD_NONBLOCK)?,
        console_writer,
    )));
    let mut pio = Bus::new();
    pio.insert(
        serial.clone(),
        u64::from(layout::COM1_PORT),
        u64::from(layout::COM1_PORT_LEN),
    )?;
    let keyboard_irq = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&keyboard_irq, layout::I8042_GSI)?;
    let keyboard = Arc::new(Mutex::new(I8042::new(keyboard_irq, exit.clone())));
    let i8042: Arc<Mutex<dyn BusDevice>> = keyboard.clone();
    pio.insert(
        i8042,
        u64::from(layout::I8042_PORT),
        u64::from(layout::I8042_PORT_LEN),
    )?;
    let pm: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone())));
    pio.insert(pm, u64::from(layout::ACPI_PM_PORT), 1)?;
    let mut mmio = Bus::new();
    let pvpanic: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(PvPanic::new(exit.clone())));
    mmio.insert(
        pvpanic,
        layout::PVPANIC_MMIO_START,
        u64::from(layout::PVPANIC_MMIO_SIZE),
    )?;
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut open_connections = None;
    if let (Some(host_socket), Some(listen_socket)) = (&cfg.host_socket, vsock_socket) {
        let (handler, open) = attach_vsock(cfg, vm, mem, host_socket, listen_socket, &mut mmio)?;
        subscribers.push(handler);
        open_connections = Some(open);
    }
    if let Some(path) = &cfg.metrics_socket {
        subscribers.push(Box::new(MetricsServer::new(
            bind_metrics_socket(path)?,
            cfg.name.clone(),
            open_connections,
        )?));
    }
    Ok(Devices {
        exit,
        console,
        serial,
        keyboard,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        subscribers,
    })
}

/// The VM's metrics socket at `path` (mode 0660, as the VM's own socket), replacing a stale
/// file nobody answers on.
fn bind_metrics_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let bind = || {
        if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
            std::fs::remove_file(path)?;
        }
        let l = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        Ok(l)
    };
    bind().map_err(|source| BuildError::MetricsSocket {
        path: path.to_path_buf(),
        source,
    })
}

/// The vsock connections open now, read from the device (for the metrics gauge).
type OpenConnections = Box<dyn Fn() -> u64 + Send>;

/// virtio-vsock at the first virtio-mmio window, bridged to `host_socket`, with the VM's own
/// socket bound at `listen_socket` (the muxer binds it here); returns its event-loop
/// subscriber and a reader of its open connections.
fn attach_vsock(
    cfg: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    host_socket: &Path,
    listen_socket: PathBuf,
    mmio: &mut Bus,
) -> Result<(Subscriber, OpenConnections), BuildError> {
    // Ioeventfds on QueueNotify (one per queue, matched on the queue index), an irqfd on its
    // GSI.
    let base = layout::VIRTIO_MMIO_START;
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&irq_evt, layout::GSI_VIRTIO_START)?;
    let mut queue_evts = Vec::new();
    for index in 0..3u32 {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_ioevent(&evt, base + QUEUE_NOTIFY_OFFSET, index)?;
        queue_evts.push(evt);
    }
    let muxer = Muxer::new(MuxerConfig {
        vm: cfg.name.clone(),
        cid: u64::from(cfg.cid),
        host_socket: host_socket.to_path_buf(),
        listen_socket: Some(listen_socket),
        peer_uids: cfg.vsock_peer_uids_resolved(host_socket),
        // Outbound guest connections are bridged to the socket host-server passes (#14).
        take_sockets: true,
    })?;
    let irq = IrqLine::new(irq_evt);
    let irq_status = irq.status();
    let device = Arc::new(Mutex::new(VsockDevice::new(
        u64::from(cfg.cid),
        mem.clone(),
        irq,
        muxer,
    )));
    let kicks = queue_evts
        .iter()
        .map(EventFd::try_clone)
        .collect::<Result<Vec<_>, _>>()?;
    let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    let transport: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(MmioTransport::new(as_virtio, irq_status, kicks)));
    mmio.insert(transport, base, u64::from(layout::VIRTIO_MMIO_SIZE))?;
    let gauge = Arc::clone(&device);
    let open: OpenConnections = Box::new(move || {
        let d = gauge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        d.muxer().connection_count() as u64
    });
    Ok((Box::new(VsockHandler::new(device, queue_evts)), open))
}
