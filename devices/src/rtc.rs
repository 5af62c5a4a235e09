//! The MC146818-style CMOS RTC at ports 0x70 (index) and 0x71 (data).
//!
//! The time registers are read from the host's wall clock plus an offset in whole
//! seconds; a guest that sets the time (with or without the SET bit of register B) only
//! moves that offset, so the guest's seconds tick with the host's. Registers A to D
//! behave as the guest's drivers expect: A shows update-in-progress during the last
//! 244 us of each second, B chooses BCD or binary and 12 or 24 hour format, D always
//! reports valid RAM and time. The other bytes of the 128-byte CMOS RAM are plain
//! storage, as is bit 7 of the index (the NMI mask), which is kept but masks nothing.
//!
//! Limits: no periodic, alarm or update-ended interrupts are generated (no IRQ 8), so
//! register C always reads 0 and the alarm registers are plain storage. The day of the
//! week is always derived from the date; writes to it are ignored. The daylight-saving
//! bit of register B is kept but never applied.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::debug;
use serde::{Deserialize, Serialize};

use crate::bus::PioDevice;

/// The index port.
pub const RTC_BASE: u16 = 0x70;
/// The RTC's two ports: index and data.
pub const RTC_LEN: u16 = 2;
/// Bytes of CMOS RAM, the clock registers included.
pub const CMOS_SIZE: usize = 128;

const INDEX_PORT: u16 = 0;
const DATA_PORT: u16 = 1;
const INDEX_MASK: u8 = 0x7f;
const NMI_DISABLE: u8 = 0x80;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// Where PC firmware keeps the century (the ACPI FADT names this byte).
const CENTURY: usize = 0x32;
const TIME_REGISTERS: [usize; 8] = [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY];

const A_UPDATE_IN_PROGRESS: u8 = 0x80;
/// 32.768 kHz time base, 1024 Hz rate: what firmware programs.
const A_DEFAULT: u8 = 0x26;
const B_SET: u8 = 0x80;
const B_UPDATE_INT: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
const B_DEFAULT: u8 = B_24_HOUR;
const D_VALID: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

/// How long before each second's update the update-in-progress bit is set.
const UIP_WINDOW: Duration = Duration::from_micros(244);

/// Errors of the RTC.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    /// A saved state has the wrong amount of CMOS RAM.
    #[error(
        "the RTC state holds {len} bytes of CMOS RAM instead of {CMOS_SIZE}; the snapshot \
         is corrupt or from another device model"
    )]
    CmosSize {
        /// Number of bytes in the state.
        len: usize,
    },
}

/// What the guest can observe of the RTC besides the passing of time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RtcState {
    /// The index register, bit 7 (NMI disable) included.
    pub index: u8,
    /// All 128 bytes of CMOS RAM. The time registers in it only matter while register
    /// B's SET bit holds the clock; otherwise they are computed when read.
    pub cmos: Vec<u8>,
    /// Guest time minus host wall-clock time, in seconds.
    pub offset_secs: i64,
}

/// A source of wall-clock time, so tests can run the RTC on a clock they control.
pub trait WallClock: Send {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Duration {
        // A host clock before 1970 is a broken host; count it as the epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// The CMOS RTC and its RAM.
pub struct Rtc {
    index: u8,
    cmos: [u8; CMOS_SIZE],
    offset_secs: i64,
    clock: Box<dyn WallClock>,
}

impl Rtc {
    /// Creates an RTC showing the host's wall-clock time (UTC), BCD and 24-hour format.
    pub fn new() -> Self {
        Self::with_clock(Box::new(SystemClock))
    }

    /// Creates an RTC that reads time from `clock`.
    pub fn with_clock(clock: Box<dyn WallClock>) -> Self {
        let mut cmos = [0; CMOS_SIZE];
        cmos[REG_A] = A_DEFAULT;
        cmos[REG_B] = B_DEFAULT;
        cmos[REG_D] = D_VALID;
        Self {
            index: 0,
            cmos,
            offset_secs: 0,
            clock,
        }
    }

    /// Rebuilds an RTC from `state` on the host's wall clock: the guest's time goes on
    /// from the host's current time plus the saved offset.
    pub fn restore(state: &RtcState) -> Result<Self, RtcError> {
        Self::restore_with_clock(Box::new(SystemClock), state)
    }

    /// Rebuilds an RTC from `state`, reading time from `clock`.
    pub fn restore_with_clock(
        clock: Box<dyn WallClock>,
        state: &RtcState,
    ) -> Result<Self, RtcError> {
        let cmos =
            <[u8; CMOS_SIZE]>::try_from(state.cmos.as_slice()).map_err(|_| RtcError::CmosSize {
                len: state.cmos.len(),
            })?;
        let (index, offset_secs) = (state.index, state.offset_secs);
        Ok(Self {
            index,
            cmos,
            offset_secs,
            clock,
        })
    }

    /// Captures the index, the CMOS RAM and the time offset.
    pub fn save(&self) -> RtcState {
        RtcState {
            index: self.index,
            cmos: self.cmos.to_vec(),
            offset_secs: self.offset_secs,
        }
    }

    /// Whether the guest has set the NMI-disable bit of the index register.
    pub fn nmi_disabled(&self) -> bool {
        self.index & NMI_DISABLE != 0
    }

    fn guest_now(&self) -> (i64, Duration) {
        let host = self.clock.now();
        let secs = i64::try_from(host.as_secs()).unwrap_or(i64::MAX);
        let fraction = Duration::from_nanos(u64::from(host.subsec_nanos()));
        (secs.saturating_add(self.offset_secs), fraction)
    }

    fn clock_held(&self) -> bool {
        self.cmos[REG_B] & B_SET != 0
    }

    fn read_register(&self, reg: usize) -> u8 {
        match reg {
            _ if TIME_REGISTERS.contains(&reg) && !self.clock_held() => {
                let (secs, _) = self.guest_now();
                encode(&DateTime::from_unix(secs), self.cmos[REG_B])[reg]
            }
            REG_A => self.cmos[REG_A] | self.update_in_progress(),
            REG_C => 0,
            REG_D => D_VALID,
            _ => self.cmos[reg],
        }
    }

    fn update_in_progress(&self) -> u8 {
        let (_, fraction) = self.guest_now();
        let near_update = fraction >= Duration::from_secs(1) - UIP_WINDOW;
        if near_update && !self.clock_held() {
            A_UPDATE_IN_PROGRESS
        } else {
            0
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            _ if TIME_REGISTERS.contains(&reg) => self.write_time(reg, value),
            REG_A => self.cmos[REG_A] = value & !A_UPDATE_IN_PROGRESS,
            REG_B => self.write_b(value),
            REG_C | REG_D => debug!("rtc: write {value:#04x} to read-only register {reg:#x}"),
            _ => self.cmos[reg] = value,
        }
    }

    /// A running clock takes one changed field at once; a held one collects the
    /// fields until SET is cleared.
    fn write_time(&mut self, reg: usize, value: u8) {
        if self.clock_held() {
            self.cmos[reg] = value;
            return;
        }
        self.latch_time(self.cmos[REG_B]);
        self.cmos[reg] = value;
        self.apply_latched_time(self.cmos[REG_B]);
    }

    fn write_b(&mut self, value: u8) {
        let old = self.cmos[REG_B];
        let held = value & B_SET != 0;
        if held && old & B_SET == 0 {
            self.latch_time(value);
        }
        if !held && old & B_SET != 0 {
            self.apply_latched_time(old);
        }
        // Setting SET also clears the update-ended interrupt enable, as on the chip.
        self.cmos[REG_B] = if held { value & !B_UPDATE_INT } else { value };
    }

    /// Copies the current guest time into the time registers, in format `b`.
    fn latch_time(&mut self, b: u8) {
        let (secs, _) = self.guest_now();
        let regs = encode(&DateTime::from_unix(secs), b);
        for reg in TIME_REGISTERS {
            self.cmos[reg] = regs[reg];
        }
    }

    /// Makes the time in the time registers (format `b`) the guest's time from now on.
    fn apply_latched_time(&mut self, b: u8) {
        let Some(time) = decode(&self.cmos, b) else {
            debug!("rtc: guest wrote an invalid date or time; the clock keeps its time");
            return;
        };
        let host = i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX);
        self.offset_secs = time.to_unix().saturating_sub(host);
        debug!(
            "rtc: guest set the time; offset to host now {} s",
            self.offset_secs
        );
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl PioDevice for Rtc {
    fn name(&self) -> &str {
        "rtc"
    }

    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_PORT => self.read_register(usize::from(self.index & INDEX_MASK)),
            // The index register is write-only on the chip.
            _ => 0xff,
        };
        data[1..].fill(0xff);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data.first()) {
            (INDEX_PORT, Some(&value)) => self.index = value,
            (DATA_PORT, Some(&value)) => {
                self.write_register(usize::from(self.index & INDEX_MASK), value)
            }
            _ => debug!("rtc: write at offset {offset} ignored"),
        }
    }
}

/// A calendar date and time of day, UTC, as the RTC registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

// The calendar arithmetic below is written here instead of pulling in a date crate:
// the RTC needs only these two conversions, on the proleptic Gregorian calendar.
impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
        // rem < 86400, so the three fit in a byte.
        let [hour, minute, second] = [hour, minute, second].map(|v| v as u8);
        Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    fn to_unix(self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// 1 (Sunday) to 7 (Saturday), as the RTC counts.
    fn weekday(&self) -> u8 {
        // 1970-01-01 was a Thursday.
        let days = days_from_civil(self.year, self.month, self.day);
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01; inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u8, day)
}

fn days_in_month(year: i64, month: u8) -> u8 {
    let next = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    (days_from_civil(next.0, next.1, 1) - days_from_civil(year, month, 1)) as u8
}

/// The time registers for `time` in the format register B `b` selects, indexed like
/// CMOS RAM.
fn encode(time: &DateTime, b: u8) -> [u8; CMOS_SIZE] {
    let field = |v: u8| if b & B_BINARY != 0 { v } else { to_bcd(v) };
    let mut regs = [0; CMOS_SIZE];
    regs[SECONDS] = field(time.second);
    regs[MINUTES] = field(time.minute);
    regs[HOURS] = if b & B_24_HOUR != 0 {
        field(time.hour)
    } else {
        let pm = if time.hour >= 12 { HOUR_PM } else { 0 };
        field((time.hour + 11) % 12 + 1) | pm
    };
    regs[WEEKDAY] = field(time.weekday());
    regs[DAY] = field(time.day);
    regs[MONTH] = field(time.month);
    regs[YEAR] = field(time.year.rem_euclid(100) as u8);
    regs[CENTURY] = field(time.year.div_euclid(100).rem_euclid(100) as u8);
    regs
}

/// The time in the time registers of `cmos`, read in format `b`; None when a field
/// is not a valid number in that format or out of range.
fn decode(cmos: &[u8; CMOS_SIZE], b: u8) -> Option<DateTime> {
    let field = |v: u8| {
        if b & B_BINARY != 0 {
            Some(v)
        } else {
            from_bcd(v)
        }
    };
    let hour = if b & B_24_HOUR != 0 {
        field(cmos[HOURS])?
    } else {
        let hour12 = field(cmos[HOURS] & !HOUR_PM).filter(|h| (1..=12).contains(h))?;
        hour12 % 12 + if cmos[HOURS] & HOUR_PM != 0 { 12 } else { 0 }
    };
    let year = i64::from(field(cmos[CENTURY])?) * 100 + i64::from(field(cmos[YEAR])?);
    let time = DateTime {
        year,
        month: field(cmos[MONTH])?,
        day: field(cmos[DAY])?,
        hour,
        minute: field(cmos[MINUTES])?,
        second: field(cmos[SECONDS])?,
    };
    valid(&time).then_some(time)
}

fn valid(t: &DateTime) -> bool {
    (1..=12).contains(&t.month)
        && (1..=days_in_month(t.year, t.month)).contains(&t.day)
        && t.hour < 24
        && t.minute < 60
        && t.second < 60
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (high, low) = (v >> 4, v & 0x0f);
    (high <= 9 && low <= 9).then_some(high * 10 + low)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// 2024-02-29 13:45:56 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_356;

    /// A wall clock the test moves by hand, in nanoseconds since the epoch.
    #[derive(Clone)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn at(secs: u64) -> Self {
            Self(Arc::new(AtomicU64::new(secs * 1_000_000_000)))
        }
        fn set(&self, secs: u64, nanos: u64) {
            self.0.store(secs * 1_000_000_000 + nanos, Ordering::SeqCst);
        }
    }

    impl WallClock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn rtc_at(secs: u64) -> (Rtc, FakeClock) {
        let clock = FakeClock::at(secs);
        (Rtc::with_clock(Box::new(clock.clone())), clock)
    }

    fn rd(rtc: &mut Rtc, reg: usize) -> u8 {
        rtc.write(INDEX_PORT, &[reg as u8]);
        let mut b = [0];
        rtc.read(DATA_PORT, &mut b);
        b[0]
    }

    fn wr(rtc: &mut Rtc, reg: usize, value: u8) {
        rtc.write(INDEX_PORT, &[reg as u8]);
        rtc.write(DATA_PORT, &[value]);
    }

    /// Seconds, minutes, hours, weekday, day, month, year, century.
    fn time_regs(rtc: &mut Rtc) -> [u8; 8] {
        TIME_REGISTERS.map(|reg| rd(rtc, reg))
    }

    #[test]
    fn time_is_bcd_and_24_hour_by_default() {
        let (mut rtc, _) = rtc_at(LEAP_DAY);
        assert_eq!(
            time_regs(&mut rtc),
            [0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(rd(&mut rtc, REG_B), B_24_HOUR);
        assert_eq!(rd(&mut rtc, REG_D), D_VALID);
        assert_eq!(rd(&mut rtc, REG_C), 0);
    }

    #[test]
    fn binary_and_12_hour_formats_follow_register_b() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY);
        wr(&mut rtc, REG_B, B_BINARY);
        assert_eq!(time_regs(&mut rtc), [56, 45, 1 | HOUR_PM, 5, 29, 2, 24, 20]);
        clock.set(LEAP_DAY - 13 * 3600 - 45 * 60, 0); // 00:00:56
        assert_eq!(rd(&mut rtc, HOURS), 12);
        wr(&mut rtc, REG_B, 0);
        clock.set(LEAP_DAY - 3600 - 45 * 60, 0); // 12:00:56
        assert_eq!(rd(&mut rtc, HOURS), 0x12 | HOUR_PM);
    }

    #[test]
    fn update_in_progress_shows_just_before_each_second() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY);
        assert_eq!(rd(&mut rtc, REG_A), A_DEFAULT);
        clock.set(LEAP_DAY, 999_800_000);
        assert_eq!(rd(&mut rtc, REG_A), A_DEFAULT | A_UPDATE_IN_PROGRESS);
        wr(&mut rtc, REG_A, 0xff);
        assert_eq!(rd(&mut rtc, REG_A), 0xff, "bits 0-6 are writable");
        clock.set(LEAP_DAY + 1, 1_000);
        assert_eq!(rd(&mut rtc, REG_A), 0x7f);
    }

    /// The sequence Linux's mc146818_set_time uses: hold with SET, write, release.
    fn set_time_like_linux(rtc: &mut Rtc, regs: [(usize, u8); 7]) {
        let b = rd(rtc, REG_B);
        wr(rtc, REG_B, b | B_SET);
        for (reg, value) in regs {
            wr(rtc, reg, value);
        }
        wr(rtc, REG_B, b);
    }

    const NEW_YEAR_2030: [(usize, u8); 7] = [
        (YEAR, 0x30),
        (MONTH, 0x01),
        (DAY, 0x01),
        (HOURS, 0x00),
        (MINUTES, 0x00),
        (SECONDS, 0x00),
        (CENTURY, 0x20),
    ];

    #[test]
    fn guest_set_time_moves_the_offset_and_keeps_ticking() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY);
        set_time_like_linux(&mut rtc, NEW_YEAR_2030);
        assert_eq!(rtc.save().offset_secs, 1_893_456_000 - LEAP_DAY as i64);
        clock.set(LEAP_DAY + 61, 0);
        assert_eq!(
            time_regs(&mut rtc),
            [0x01, 0x01, 0x00, 0x03, 0x01, 0x01, 0x30, 0x20]
        );
    }

    #[test]
    fn a_held_clock_reads_what_the_guest_wrote() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY);
        wr(&mut rtc, REG_B, B_24_HOUR | B_SET | B_UPDATE_INT);
        assert_eq!(rd(&mut rtc, REG_B), B_24_HOUR | B_SET, "SET clears UIE");
        wr(&mut rtc, MINUTES, 0x07);
        clock.set(LEAP_DAY + 10, 999_900_000);
        assert_eq!(rd(&mut rtc, MINUTES), 0x07);
        assert_eq!(rd(&mut rtc, SECONDS), 0x56, "a held clock does not tick");
        assert_eq!(rd(&mut rtc, REG_A) & A_UPDATE_IN_PROGRESS, 0);
    }

    #[test]
    fn a_single_field_write_shifts_only_that_field() {
        let (mut rtc, _) = rtc_at(LEAP_DAY);
        wr(&mut rtc, HOURS, 0x15);
        assert_eq!(rtc.save().offset_secs, 2 * 3600);
        assert_eq!(time_regs(&mut rtc)[..3], [0x56, 0x45, 0x15]);
    }

    #[test]
    fn invalid_times_are_ignored() {
        let (mut rtc, _) = rtc_at(LEAP_DAY);
        wr(&mut rtc, MONTH, 0x13);
        wr(&mut rtc, DAY, 0x3a);
        assert_eq!(rtc.save().offset_secs, 0);
        assert_eq!(rd(&mut rtc, MONTH), 0x02);
    }

    #[test]
    fn ram_index_and_nmi_bit_are_kept() {
        let (mut rtc, _) = rtc_at(LEAP_DAY);
        wr(&mut rtc, 0x40, 0x99);
        rtc.write(INDEX_PORT, &[NMI_DISABLE | 0x40]);
        assert!(rtc.nmi_disabled());
        let mut b = [0];
        rtc.read(DATA_PORT, &mut b);
        assert_eq!(b[0], 0x99);
        rtc.read(INDEX_PORT, &mut b);
        assert_eq!(b[0], 0xff, "the index port is write-only");
    }

    #[test]
    fn save_restore_save_is_stable() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY);
        wr(&mut rtc, 0x40, 0x99);
        wr(&mut rtc, REG_B, B_BINARY | B_24_HOUR);
        wr(&mut rtc, HOURS, 3);
        rtc.write(INDEX_PORT, &[NMI_DISABLE | 0x0a]);
        let saved = rtc.save();
        let restored = Rtc::restore_with_clock(Box::new(clock), &saved).unwrap();
        assert_eq!(restored.save(), saved);

        let mut buf = Vec::new();
        ciborium::into_writer(&saved, &mut buf).unwrap();
        let decoded: RtcState = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(decoded, saved);
    }

    #[test]
    fn restored_rtc_continues_from_host_time_plus_offset() {
        let (mut rtc, _) = rtc_at(LEAP_DAY);
        set_time_like_linux(&mut rtc, NEW_YEAR_2030);
        rtc.write(INDEX_PORT, &[NMI_DISABLE]);
        let saved = rtc.save();

        // Restored an hour of host time later, on another clock.
        let later = FakeClock::at(LEAP_DAY + 3600);
        let mut restored = Rtc::restore_with_clock(Box::new(later), &saved).unwrap();
        assert!(restored.nmi_disabled());
        assert_eq!(
            time_regs(&mut restored),
            [0x00, 0x00, 0x01, 0x03, 0x01, 0x01, 0x30, 0x20]
        );
    }

    #[test]
    fn restore_refuses_short_cmos() {
        let (rtc, _) = rtc_at(LEAP_DAY);
        let mut state = rtc.save();
        state.cmos.pop();
        let err = Rtc::restore(&state).err().unwrap();
        assert!(matches!(err, RtcError::CmosSize { len } if len == CMOS_SIZE - 1));
    }

    #[test]
    fn calendar_conversions_agree_with_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(DateTime::from_unix(LEAP_DAY as i64).weekday(), 5);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn bcd_round_trips_and_rejects_bad_digits() {
        for v in 0..100 {
            assert_eq!(from_bcd(to_bcd(v)), Some(v));
        }
        assert_eq!(from_bcd(0x1a), None);
        assert_eq!(from_bcd(0xa1), None);
    }
}
