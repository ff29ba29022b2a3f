//! The agent's one NVMe admin-command module (`NVME_IOCTL_ADMIN_CMD`, the only unsafe code of the
//! agent's device access; the agent runs privileged). Two commands:
//! - Identify Namespace ([`identify_namespace`]), for one fact: whether the namespace's
//!   deallocated blocks read as zeroes (DLFEAT, byte 33, bits 2:0 = `001b`), the only evidence
//!   that a discard (Dataset Management deallocate) destroys data on NVMe; Write Zeroes support
//!   says nothing about it. The decision is the pure [`dealloc_reads_zeroes`].
//! - Get Log Page 0x02, SMART / Health Information ([`smart_log`]), parsed by `health::nvme`.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Size of an Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;
/// Byte offset of DLFEAT in Identify Namespace.
const DLFEAT: usize = 33;

/// Whether Identify Namespace data says deallocated blocks read as zeroes. Pure.
pub fn dealloc_reads_zeroes(id_ns: &[u8]) -> bool {
    id_ns.get(DLFEAT).is_some_and(|b| b & 0b111 == 0b001)
}

/// `struct nvme_passthru_cmd` of `<linux/nvme_ioctl.h>` (72 bytes).
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// `NVME_IOCTL_ID`: `_IO('N', 0x40)`, returns the namespace id of the opened namespace.
const NVME_IOCTL_ID: u64 = 0x4E40;
/// `NVME_IOCTL_ADMIN_CMD`: `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
const NVME_IOCTL_ADMIN_CMD: u64 = 0xC048_4E41;
/// Admin opcode Identify; CNS 0 = Identify Namespace.
const OPC_IDENTIFY: u8 = 0x06;

/// Admin opcode Get Log Page, and the SMART / Health Information log's identifier and size.
const OPC_GET_LOG_PAGE: u8 = 0x02;
const SMART_LOG_ID: u32 = 0x02;
/// Size of the SMART / Health Information log page.
pub const SMART_LOG_BYTES: usize = 512;

/// Sends one admin command; its data buffer is `cmd.addr`/`cmd.data_len`. An NVMe status other
/// than success is an error naming `what`.
fn admin(file: &std::fs::File, cmd: &mut PassthruCmd, what: &str) -> std::io::Result<()> {
    const _: () = assert!(std::mem::size_of::<PassthruCmd>() == 72);
    // SAFETY: `cmd` is a properly laid out nvme_passthru_cmd whose `addr` points at a live
    // buffer of `data_len` bytes owned by the caller for the whole call; the kernel writes only
    // there.
    #[allow(unsafe_code)]
    let rc = unsafe {
        nix::libc::ioctl(
            file.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD as _,
            cmd as *mut PassthruCmd,
        )
    };
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(std::io::Error::last_os_error()),
        status => Err(std::io::Error::other(format!(
            "{what} failed with NVMe status {status:#x}"
        ))),
    }
}

/// The controller-wide SMART / Health Information log of an NVMe device node (controller
/// `/dev/nvmeN` or a namespace `/dev/nvmeNnM`); needs CAP_SYS_ADMIN. Blocking: call it from a
/// blocking thread.
pub fn smart_log(device: &Path) -> std::io::Result<[u8; SMART_LOG_BYTES]> {
    let file = std::fs::File::open(device)?;
    let mut buf = [0u8; SMART_LOG_BYTES];
    let dwords = (SMART_LOG_BYTES / 4) as u32;
    let mut cmd = PassthruCmd {
        opcode: OPC_GET_LOG_PAGE,
        nsid: 0xFFFF_FFFF,
        addr: buf.as_mut_ptr() as u64,
        data_len: SMART_LOG_BYTES as u32,
        // NUMDL (number of dwords - 1) in bits 31:16, log page identifier in bits 7:0
        cdw10: ((dwords - 1) << 16) | SMART_LOG_ID,
        timeout_ms: 5_000,
        ..PassthruCmd::default()
    };
    admin(&file, &mut cmd, "Get Log Page 0x02")?;
    Ok(buf)
}

/// Identify Namespace data of the NVMe namespace block device at `dev` (e.g. `/dev/nvme0n1`).
pub fn identify_namespace(dev: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(dev)?;
    let fd = file.as_raw_fd();
    // SAFETY: NVME_IOCTL_ID takes no argument and only returns an int.
    #[allow(unsafe_code)]
    let nsid = unsafe { nix::libc::ioctl(fd, NVME_IOCTL_ID as _) };
    if nsid <= 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut data = vec![0u8; IDENTIFY_BYTES];
    let mut cmd = PassthruCmd {
        opcode: OPC_IDENTIFY,
        nsid: nsid as u32,
        addr: data.as_mut_ptr() as u64,
        data_len: IDENTIFY_BYTES as u32,
        cdw10: 0,
        ..PassthruCmd::default()
    };
    admin(&file, &mut cmd, "Identify Namespace")?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identify Namespace as qemu's NVMe answers it (nsze/ncap/nuse of an 8 GiB namespace of
    /// 512-byte blocks, one LBA format), with `dlfeat` at byte 33.
    fn captured(dlfeat: u8) -> Vec<u8> {
        let mut d = vec![0u8; IDENTIFY_BYTES];
        let blocks = (8u64 << 30) / 512;
        d[0..8].copy_from_slice(&blocks.to_le_bytes());
        d[8..16].copy_from_slice(&blocks.to_le_bytes());
        d[16..24].copy_from_slice(&blocks.to_le_bytes());
        d[33] = dlfeat;
        d[130] = 9; // LBAF0: 2^9-byte blocks
        d
    }

    #[test]
    fn only_dlfeat_001_proves_zeroes_after_deallocate() {
        assert!(
            !dealloc_reads_zeroes(&captured(0)),
            "DLFEAT 0: not reported"
        );
        assert!(dealloc_reads_zeroes(&captured(1)), "DLFEAT 1: reads zeroes");
        assert!(!dealloc_reads_zeroes(&captured(2)), "DLFEAT 2: reads ones");
        // Bit 3 (Write Zeroes may deallocate) and bit 4 (guard field) do not change the answer.
        assert!(dealloc_reads_zeroes(&captured(0b1_1001)));
        assert!(!dealloc_reads_zeroes(&captured(0b0_1000)));
        assert!(!dealloc_reads_zeroes(&[]), "no data: no evidence");
    }

    #[test]
    fn a_device_that_is_not_nvme_is_an_error() {
        assert!(identify_namespace(Path::new("/dev/null")).is_err());
        assert!(identify_namespace(Path::new("/nonexistent/nvme0n1")).is_err());
    }
}
