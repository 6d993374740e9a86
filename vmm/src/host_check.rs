//! Can this host run the VM? outsock-vmm boots unmodified kernels, which needs hardware
//! virtualization (VMX or SVM) behind /dev/kvm. The project's own machines have a PVM
//! /dev/kvm (module `kvm_pvm`, no vmx/svm CPU flag) that runs only PVM-enabled guest kernels;
//! there the VMM must stop at once and point at the lab VM harness instead.

use std::path::Path;

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKvm {
    /// /dev/kvm with VMX or SVM: unmodified kernels boot.
    Hardware,
    /// No /dev/kvm at all.
    Missing,
    /// /dev/kvm is PVM (or has no hardware virtualization behind it).
    Pvm { reason: String },
}

/// Where to look, so tests can point it at fixtures.
#[derive(Debug, Clone)]
pub struct HostPaths<'a> {
    pub dev_kvm: &'a Path,
    pub cpuinfo: &'a Path,
    pub sys_module: &'a Path,
}

impl Default for HostPaths<'static> {
    fn default() -> Self {
        Self {
            dev_kvm: Path::new("/dev/kvm"),
            cpuinfo: Path::new("/proc/cpuinfo"),
            sys_module: Path::new("/sys/module"),
        }
    }
}

/// Whether the `flags` lines of /proc/cpuinfo name vmx or svm.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Classifies the host.
pub fn probe(paths: &HostPaths<'_>) -> HostKvm {
    if !paths.dev_kvm.exists() {
        return HostKvm::Missing;
    }
    if paths.sys_module.join("kvm_pvm").exists() {
        return HostKvm::Pvm {
            reason: "the kvm_pvm module is loaded".into(),
        };
    }
    let cpuinfo = std::fs::read_to_string(paths.cpuinfo).unwrap_or_default();
    if !cpuinfo_has_hw_virt(&cpuinfo) {
        return HostKvm::Pvm {
            reason: "/proc/cpuinfo has neither the vmx nor the svm flag".into(),
        };
    }
    HostKvm::Hardware
}

/// The message for a host that cannot run the VM, or `None` if it can.
pub fn unusable_message(host: &HostKvm) -> Option<String> {
    const HOW: &str = "To test outsock-vmm on this machine, run the lab VM harness, which boots a \
        QEMU machine with emulated AMD SVM and runs the VMM inside it: vmm/lab/run \
        (see vmm/lab/README.md).";
    match host {
        HostKvm::Hardware => None,
        HostKvm::Missing => Some(format!(
            "/dev/kvm does not exist: this host has no KVM, and outsock-vmm needs hardware \
             virtualization (Intel VMX or AMD SVM) with the kvm_intel or kvm_amd module. {HOW}"
        )),
        HostKvm::Pvm { reason } => Some(format!(
            "this host's /dev/kvm cannot boot an unmodified kernel ({reason}): it is PVM or \
             lacks hardware virtualization, and PVM runs only PVM-enabled guest kernels. {HOW}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(kvm: bool, flags: &str, pvm: bool) -> (tempfile::TempDir, HostKvm) {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = dir.path().join("kvm");
        if kvm {
            std::fs::write(&dev, "").expect("write");
        }
        let cpuinfo = dir.path().join("cpuinfo");
        std::fs::write(&cpuinfo, format!("processor\t: 0\nflags\t\t: {flags}\n")).expect("write");
        let module = dir.path().join("module");
        std::fs::create_dir_all(module.join("kvm")).expect("mkdir");
        if pvm {
            std::fs::create_dir_all(module.join("kvm_pvm")).expect("mkdir");
        }
        let host = probe(&HostPaths {
            dev_kvm: &dev,
            cpuinfo: &cpuinfo,
            sys_module: &module,
        });
        (dir, host)
    }

    #[test]
    fn classifies_hosts() {
        assert_eq!(fixture(true, "fpu vme svm npt", false).1, HostKvm::Hardware);
        assert_eq!(fixture(true, "fpu vmx ept", false).1, HostKvm::Hardware);
        assert_eq!(fixture(false, "fpu vmx", false).1, HostKvm::Missing);
        assert!(matches!(
            fixture(true, "fpu sse2", false).1,
            HostKvm::Pvm { .. }
        ));
        assert!(matches!(
            fixture(true, "fpu svm", true).1,
            HostKvm::Pvm { .. }
        ));
        assert!(!cpuinfo_has_hw_virt("flags : svmx vmxx\n"));
    }

    #[test]
    fn messages_point_at_the_lab() {
        let m = unusable_message(&HostKvm::Pvm { reason: "x".into() }).expect("message");
        assert!(m.contains("PVM") && m.contains("vmm/lab/run"));
        assert!(unusable_message(&HostKvm::Missing)
            .expect("message")
            .contains("/dev/kvm"));
        assert_eq!(unusable_message(&HostKvm::Hardware), None);
    }
}
