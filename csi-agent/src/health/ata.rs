//! SATA SMART health: SMART RETURN STATUS sent as an ATA PASS-THROUGH (16) command through the
//! `SG_IO` ioctl of the disk's SCSI device node (libata translates it, SAT). With CK_COND set, the
//! device's registers come back in the sense data: LBA mid/high `4Fh/C2h` = no threshold
//! exceeded, `F4h/2Ch` = a SMART attribute crossed its threshold (the drive predicts failure).
//!
//! Decision (ioctl, not smartctl): one command with a fixed answer, no extra binary in the image
//! and no text or version-dependent JSON output to parse; smartctl's extra value (attribute
//! tables, vendor quirks) is not needed for a pass/fail verdict. SAS disks (no ATA behind them)
//! are not asked: their failures show in the kernel's device state and error counters.

use std::os::fd::AsRawFd;
use std::path::Path;

/// The verdict of SMART RETURN STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmartStatus {
    Passed,
    ThresholdExceeded,
}

/// The sense data did not carry the ATA registers this command must return.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no ATA status in the sense data ({0})")]
pub struct NoStatus(pub String);

/// Reads the verdict from the sense buffer: descriptor format (0x72, ATA Status Return
/// descriptor 09h: LBA mid at +9, LBA high at +11) or fixed format (0x70, SAT: LBA mid at 10,
/// LBA high at 11).
pub fn parse_sense(sense: &[u8]) -> Result<SmartStatus, NoStatus> {
    let regs = match sense.first().map(|b| b & 0x7f) {
        Some(0x72) | Some(0x73) => {
            let len = usize::from(*sense.get(7).unwrap_or(&0));
            let end = (8 + len).min(sense.len());
            let mut at = 8;
            let mut found = None;
            while at + 1 < end {
                let (code, dlen) = (sense[at], usize::from(sense[at + 1]));
                if code == 0x09 && at + 13 < sense.len() {
                    found = Some((sense[at + 9], sense[at + 11]));
                    break;
                }
                at += 2 + dlen;
            }
            found.ok_or_else(|| NoStatus("no ATA Status Return descriptor".into()))?
        }
        Some(0x70) | Some(0x71) if sense.len() > 11 => (sense[10], sense[11]),
        other => return Err(NoStatus(format!("sense response code {other:?}"))),
    };
    match regs {
        (0x4f, 0xc2) => Ok(SmartStatus::Passed),
        (0xf4, 0x2c) => Ok(SmartStatus::ThresholdExceeded),
        (mid, high) => Err(NoStatus(format!(
            "LBA mid/high {mid:#04x}/{high:#04x} is neither answer of SMART RETURN STATUS"
        ))),
    }
}

/// `struct sg_io_hdr` of `<scsi/sg.h>`.
#[repr(C)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut u8,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut u8,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

const SG_IO: u64 = 0x2285;
const SG_DXFER_NONE: i32 = -1;
nix::ioctl_readwrite_bad!(sg_io, SG_IO, SgIoHdr);

/// ATA PASS-THROUGH (16), non-data protocol, CK_COND: SMART (B0h) RETURN STATUS (feature DAh,
/// LBA mid/high 4Fh/C2h).
const CDB: [u8; 16] = [
    0x85,
    0x03 << 1,
    0x20,
    0,
    0xda,
    0,
    0,
    0,
    0,
    0,
    0x4f,
    0,
    0xc2,
    0,
    0xb0,
    0,
];

/// Asks the drive behind a SCSI disk node (`/dev/sdX`); needs CAP_SYS_RAWIO. Blocking.
// The one unsafe call of this module: the ioctl (workspace lint `unsafe_code` is deny).
#[allow(unsafe_code)]
pub fn smart_status(device: &Path) -> std::io::Result<SmartStatus> {
    let file = std::fs::File::open(device)?;
    let mut sense = [0u8; 32];
    let mut hdr = SgIoHdr {
        interface_id: i32::from(b'S'),
        dxfer_direction: SG_DXFER_NONE,
        cmd_len: 16,
        mx_sb_len: 32,
        iovec_count: 0,
        dxfer_len: 0,
        dxferp: std::ptr::null_mut(),
        cmdp: CDB.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: 5_000,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` is a valid sg_io_hdr; `cmdp` points at 16 readable bytes and `sbp` at
    // `mx_sb_len` writable bytes, both alive for the call; no data transfer.
    unsafe { sg_io(file.as_raw_fd(), &mut hdr) }.map_err(std::io::Error::from)?;
    if hdr.host_status != 0 {
        return Err(std::io::Error::other(format!(
            "SG_IO host status {:#x}",
            hdr.host_status
        )));
    }
    let written = usize::from(hdr.sb_len_wr).min(sense.len());
    parse_sense(&sense[..written]).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptor-format sense with an ATA Status Return descriptor, as libata builds it.
    fn descriptor(mid: u8, high: u8) -> Vec<u8> {
        let mut s = vec![0x72, 0x01, 0x00, 0x1d, 0, 0, 0, 14];
        s.extend_from_slice(&[0x09, 0x0c, 0, 0, 0, 0, 0, 0, 0, mid, 0, high, 0, 0x50]);
        s
    }

    #[test]
    fn descriptor_sense_passed_and_exceeded() {
        assert_eq!(
            parse_sense(&descriptor(0x4f, 0xc2)),
            Ok(SmartStatus::Passed)
        );
        assert_eq!(
            parse_sense(&descriptor(0xf4, 0x2c)),
            Ok(SmartStatus::ThresholdExceeded)
        );
    }

    #[test]
    fn fixed_sense_carries_the_registers_too() {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = 0x01;
        s[10] = 0xf4;
        s[11] = 0x2c;
        assert_eq!(parse_sense(&s), Ok(SmartStatus::ThresholdExceeded));
    }

    #[test]
    fn anything_else_is_no_answer() {
        assert!(parse_sense(&[]).is_err());
        assert!(parse_sense(&descriptor(0, 0)).is_err());
        // a descriptor list without the ATA descriptor
        assert!(parse_sense(&[0x72, 0x05, 0x20, 0x00, 0, 0, 0, 4, 0x02, 0x02, 0, 0]).is_err());
    }

    #[test]
    fn the_header_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
    }
}
