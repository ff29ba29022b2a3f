//! NVMe SMART / Health Information log (log page 0x02): what its fields say about the device.
//! The parsing is pure and follows the layout of the NVMe Base Specification (figure "SMART /
//! Health Information Log Page"); the page is read by [`crate::nvme::smart_log`], the agent's one
//! NVMe admin-command module.

/// Size of the log page in bytes.
pub const LOG_BYTES: usize = crate::nvme::SMART_LOG_BYTES;

/// Critical Warning bits (byte 0) and what each says, in words.
const WARNING_BITS: [(u8, &str); 6] = [
    (0, "available spare below threshold"),
    (1, "temperature outside its threshold"),
    (2, "NVM subsystem reliability degraded"),
    (3, "media placed in read-only mode"),
    (4, "volatile memory backup failed"),
    (5, "persistent memory region read-only or unreliable"),
];

/// The fields of the log that tell whether the device is failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature_k: u16,
    /// Remaining spare capacity, percent.
    pub available_spare: u8,
    /// The spare level below which the device raises a warning, percent.
    pub spare_threshold: u8,
    /// Estimate of the rated life used, percent (may exceed 100).
    pub percentage_used: u8,
    /// Unrecovered data integrity errors over the device's life.
    pub media_errors: u128,
    pub error_log_entries: u128,
}

/// Why a log page could not be read as one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("SMART log is {0} bytes, expected {LOG_BYTES}")]
pub struct ShortLog(pub usize);

fn u128_le(b: &[u8], at: usize) -> u128 {
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(raw)
}

/// Parses the 512 bytes of log page 0x02.
pub fn parse(log: &[u8]) -> Result<SmartLog, ShortLog> {
    if log.len() < LOG_BYTES {
        return Err(ShortLog(log.len()));
    }
    Ok(SmartLog {
        critical_warning: log[0],
        temperature_k: u16::from_le_bytes([log[1], log[2]]),
        available_spare: log[3],
        spare_threshold: log[4],
        percentage_used: log[5],
        media_errors: u128_le(log, 160),
        error_log_entries: u128_le(log, 176),
    })
}

impl SmartLog {
    /// The evidence that the device is failing, in words; empty when it is healthy. A temperature
    /// warning alone is not a failing disk (it says nothing about the data), and neither are error
    /// log entries (they count rejected commands too).
    pub fn evidence(&self) -> Vec<String> {
        let mut out: Vec<String> = WARNING_BITS
            .iter()
            .filter(|(bit, _)| *bit != 1 && self.critical_warning & (1 << bit) != 0)
            .map(|(_, what)| format!("NVMe critical warning: {what}"))
            .collect();
        let spare_low = self.spare_threshold > 0 && self.available_spare < self.spare_threshold;
        if spare_low && self.critical_warning & 1 == 0 {
            out.push("NVMe critical warning: available spare below threshold".into());
        }
        if (spare_low || self.critical_warning & 1 != 0)
            && let Some(last) = out
                .iter_mut()
                .find(|e| e.ends_with("available spare below threshold"))
        {
            last.push_str(&format!(
                " ({}% left, threshold {}%)",
                self.available_spare, self.spare_threshold
            ));
        }
        if self.media_errors > 0 {
            out.push(format!(
                "NVMe media and data integrity errors: {}",
                self.media_errors
            ));
        }
        if self.percentage_used >= 100 {
            out.push(format!(
                "NVMe rated endurance used up ({}% used)",
                self.percentage_used
            ));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::LOG_BYTES;

    /// A log page as a device writes it (little-endian fields at the spec's offsets).
    pub fn log(warning: u8, spare: u8, threshold: u8, used: u8, media_errors: u128) -> Vec<u8> {
        let mut b = vec![0u8; LOG_BYTES];
        b[0] = warning;
        b[1..3].copy_from_slice(&310u16.to_le_bytes()); // 37 °C
        b[3] = spare;
        b[4] = threshold;
        b[5] = used;
        b[32..48].copy_from_slice(&123_456u128.to_le_bytes()); // data units read
        b[128..144].copy_from_slice(&9_000u128.to_le_bytes()); // power-on hours
        b[160..176].copy_from_slice(&media_errors.to_le_bytes());
        b[176..192].copy_from_slice(&7u128.to_le_bytes()); // error log entries
        b
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::log;
    use super::*;

    #[test]
    fn healthy_log_has_no_evidence() {
        let parsed = parse(&log(0, 100, 10, 3, 0)).unwrap();
        assert_eq!(parsed.temperature_k, 310);
        assert_eq!(parsed.available_spare, 100);
        assert_eq!(parsed.spare_threshold, 10);
        assert_eq!(parsed.percentage_used, 3);
        assert_eq!(parsed.error_log_entries, 7);
        assert_eq!(parsed.evidence(), Vec::<String>::new());
    }

    #[test]
    fn critical_warning_bits_are_named_but_temperature_alone_is_not_failing() {
        let parsed = parse(&log(0b0000_1100, 100, 10, 3, 0)).unwrap();
        assert_eq!(
            parsed.evidence(),
            vec![
                "NVMe critical warning: NVM subsystem reliability degraded".to_string(),
                "NVMe critical warning: media placed in read-only mode".to_string(),
            ]
        );
        assert!(
            parse(&log(0b10, 100, 10, 3, 0))
                .unwrap()
                .evidence()
                .is_empty()
        );
    }

    #[test]
    fn spare_below_threshold_is_failing_with_or_without_the_warning_bit() {
        for warning in [0, 1] {
            let ev = parse(&log(warning, 4, 10, 20, 0)).unwrap().evidence();
            assert_eq!(
                ev,
                vec![
                    "NVMe critical warning: available spare below threshold (4% left, threshold 10%)"
                        .to_string()
                ],
                "warning bits {warning:#b}"
            );
        }
        // at the threshold is not below it
        assert!(parse(&log(0, 10, 10, 20, 0)).unwrap().evidence().is_empty());
    }

    #[test]
    fn media_errors_and_worn_out_endurance_are_evidence() {
        let ev = parse(&log(0, 100, 10, 101, 2)).unwrap().evidence();
        assert_eq!(
            ev,
            vec![
                "NVMe media and data integrity errors: 2".to_string(),
                "NVMe rated endurance used up (101% used)".to_string(),
            ]
        );
    }

    #[test]
    fn a_short_page_is_refused() {
        assert_eq!(parse(&[0u8; 64]), Err(ShortLog(64)));
    }
}
