//! The driver's parameters, read in `DriverEntry` from the service's `Parameters` registry key
//! (`<RegistryPath>\Parameters`, which vmtest fills with `reg add` before `sc start`). Defaults and
//! ranges are the catalogue's (`drivers/scenarios.json`):
//!
//! | value | type | meaning | default |
//! | --- | --- | --- | --- |
//! | `Scenarios` | `REG_SZ` | scenario names, comma-separated, run in that order | every scenario except the negative controls, those marked last at the end |
//! | `Threads` | `REG_DWORD` | threads of the contention and lock-order scenarios | 3 (1..=16) |
//! | `Iterations` | `REG_DWORD` | iterations per thread | 500 (1..=100000) |
//!
//! An absent key or value, or an empty `Scenarios`, means the default; a value of the wrong type
//! is reported in a plain (non-protocol) line and the default is used. An unknown scenario name or
//! a number out of range is reported the same way and fails the load (`STATUS_INVALID_PARAMETER`),
//! as the Linux module fails its load with `-EINVAL`.

use alloc::string::String;
use alloc::vec::Vec;
use core::mem::{size_of, size_of_val};
use core::ptr::null_mut;
use core::slice;

use wdk_sys::ntddk::{ZwClose, ZwOpenKey, ZwQueryValueKey};
use wdk_sys::_KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation;
use wdk_sys::{
    HANDLE, KEY_READ, NTSTATUS, NT_SUCCESS, OBJECT_ATTRIBUTES, OBJ_CASE_INSENSITIVE,
    OBJ_KERNEL_HANDLE, PCUNICODE_STRING, REG_DWORD, REG_SZ, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND, UNICODE_STRING,
};

use crate::catalogue::{
    Scenario, ITERATIONS_DEFAULT, ITERATIONS_MAX, ITERATIONS_MIN, THREADS_DEFAULT, THREADS_MAX,
    THREADS_MIN,
};
use crate::report::note;

/// Unknown scenario names are cut to this many characters before they are reported.
const MAX_NAME: usize = 64;

/// What to run.
pub struct Config {
    /// The scenarios, in the order to run them.
    pub scenarios: Vec<Scenario>,
    /// Threads per contention / lock-order scenario.
    pub threads: u32,
    /// Iterations per thread.
    pub iterations: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scenarios: Scenario::DEFAULT.to_vec(),
            threads: THREADS_DEFAULT,
            iterations: ITERATIONS_DEFAULT,
        }
    }
}

impl Config {
    /// Reads the parameters from `<registry_path>\Parameters`; defaults for whatever is missing.
    ///
    /// # Errors
    ///
    /// `STATUS_INVALID_PARAMETER` for an unknown scenario name or a number out of range (a note
    /// names it).
    ///
    /// # Safety
    ///
    /// `registry_path` must be the registry path `DriverEntry` received (valid for the call), and
    /// the call must be made at `PASSIVE_LEVEL`.
    pub unsafe fn read(registry_path: PCUNICODE_STRING) -> Result<Self, NTSTATUS> {
        let mut config = Self::default();
        // SAFETY: forwarded from the caller.
        let key = match unsafe { Key::open_parameters(registry_path) } {
            Ok(key) => key,
            Err(status) => {
                if status != STATUS_OBJECT_NAME_NOT_FOUND {
                    note(format_args!(
                        "cannot open the Parameters key ({status:#010x}); using the defaults"
                    ));
                }
                return Ok(config);
            }
        };
        if let Some(text) = key.string("Scenarios") {
            let scenarios = parse_scenarios(&text)?;
            if !scenarios.is_empty() {
                config.scenarios = scenarios;
            }
        }
        if let Some(threads) = key.dword("Threads") {
            config.threads = in_range("Threads", threads, THREADS_MIN, THREADS_MAX)?;
        }
        if let Some(iterations) = key.dword("Iterations") {
            config.iterations = in_range("Iterations", iterations, ITERATIONS_MIN, ITERATIONS_MAX)?;
        }
        Ok(config)
    }
}

/// `kmutex_contention, irql_errors` as scenarios (blanks around names and empty entries ignored).
///
/// # Errors
///
/// `STATUS_INVALID_PARAMETER` for a name the catalogue does not have (a note names it).
pub fn parse_scenarios(text: &str) -> Result<Vec<Scenario>, NTSTATUS> {
    let mut scenarios = Vec::new();
    for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let Some(scenario) = Scenario::from_name(name) else {
            let shown: String = name.chars().take(MAX_NAME).collect();
            note(format_args!("unknown scenario '{shown}'"));
            return Err(STATUS_INVALID_PARAMETER);
        };
        scenarios.push(scenario);
    }
    Ok(scenarios)
}

/// `value` if it is within `min..=max`; otherwise a note naming the parameter, and an error.
fn in_range(name: &str, value: u32, min: u32, max: u32) -> Result<u32, NTSTATUS> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        note(format_args!("{name}={value} is out of range {min}-{max}"));
        Err(STATUS_INVALID_PARAMETER)
    }
}

/// `KEY_VALUE_PARTIAL_INFORMATION`: `TitleIndex`, `Type`, `DataLength` (three ULONGs), then data.
const VALUE_HEADER: usize = 12;
/// The most value data read; `Scenarios` with every name is about 400 bytes of UTF-16.
const VALUE_DATA: usize = 1024;

/// A `KEY_VALUE_PARTIAL_INFORMATION` buffer, aligned for its ULONG fields.
#[repr(C, align(8))]
struct ValueBuffer([u8; VALUE_HEADER + VALUE_DATA]);

/// An open registry key, closed on drop.
struct Key(HANDLE);

impl Key {
    /// Opens `<registry_path>\Parameters` for reading.
    ///
    /// # Safety
    ///
    /// As for [`Config::read`].
    unsafe fn open_parameters(registry_path: PCUNICODE_STRING) -> Result<Self, NTSTATUS> {
        // SAFETY: the caller passes DriverEntry's registry path, valid for this call.
        let service = unsafe { registry_path.as_ref() }.ok_or(STATUS_INVALID_PARAMETER)?;
        let mut path: Vec<u16> = Vec::new();
        if !service.Buffer.is_null() {
            // SAFETY: a UNICODE_STRING's Buffer holds Length bytes of UTF-16.
            let units = unsafe {
                slice::from_raw_parts(
                    service.Buffer,
                    usize::from(service.Length) / size_of::<u16>(),
                )
            };
            path.extend_from_slice(units);
        }
        path.extend("\\Parameters".encode_utf16());
        let mut name = unicode_string(&mut path).ok_or(STATUS_INVALID_PARAMETER)?;
        #[allow(clippy::cast_possible_truncation)]
        let mut attributes = OBJECT_ATTRIBUTES {
            Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
            ObjectName: &mut name,
            Attributes: OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE,
            ..Default::default()
        };
        let mut handle: HANDLE = null_mut();
        // SAFETY: PASSIVE_LEVEL (caller); `attributes` points to `name`, which points into `path`,
        // all live locals; `handle` is an out-pointer.
        let status = unsafe { ZwOpenKey(&mut handle, KEY_READ, &mut attributes) };
        if NT_SUCCESS(status) {
            Ok(Self(handle))
        } else {
            Err(status)
        }
    }

    /// A value's type and data; `None` if absent (silently) or unreadable (with a note).
    fn query(&self, value_name: &str) -> Option<(u32, Vec<u8>)> {
        let mut units: Vec<u16> = value_name.encode_utf16().collect();
        let mut name = unicode_string(&mut units)?;
        let mut buffer = ValueBuffer([0; VALUE_HEADER + VALUE_DATA]);
        let mut written: u32 = 0;
        #[allow(clippy::cast_possible_truncation)]
        let capacity = buffer.0.len() as u32;
        // SAFETY: PASSIVE_LEVEL; `self.0` is an open key; `name` points into `units`, `buffer`
        // has `capacity` bytes, `written` is an out-pointer: all live locals.
        let status = unsafe {
            ZwQueryValueKey(
                self.0,
                &mut name,
                KeyValuePartialInformation,
                buffer.0.as_mut_ptr().cast(),
                capacity,
                &mut written,
            )
        };
        if !NT_SUCCESS(status) {
            if status != STATUS_OBJECT_NAME_NOT_FOUND {
                note(format_args!(
                    "cannot read the registry value {value_name} ({status:#010x}); using the default"
                ));
            }
            return None;
        }
        let info = &buffer.0[..(written as usize).min(buffer.0.len())];
        let kind = read_u32(info, 4)?;
        let length = read_u32(info, 8)? as usize;
        let data = info.get(VALUE_HEADER..VALUE_HEADER + length)?;
        Some((kind, data.to_vec()))
    }

    /// A `REG_SZ` value as text.
    fn string(&self, value_name: &str) -> Option<String> {
        let (kind, data) = self.query(value_name)?;
        if kind != REG_SZ {
            note(format_args!(
                "{value_name} is not a REG_SZ (type {kind}); using the default"
            ));
            return None;
        }
        let units = data
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|&unit| unit != 0);
        Some(
            char::decode_utf16(units)
                .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        )
    }

    /// A `REG_DWORD` value.
    fn dword(&self, value_name: &str) -> Option<u32> {
        let (kind, data) = self.query(value_name)?;
        if kind != REG_DWORD {
            note(format_args!(
                "{value_name} is not a REG_DWORD (type {kind}); using the default"
            ));
            return None;
        }
        read_u32(&data, 0)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a key handle opened by `open_parameters`, closed exactly once here.
        let _ = unsafe { ZwClose(self.0) };
    }
}

/// A `UNICODE_STRING` over `units` (which must outlive it); `None` if too long for one.
fn unicode_string(units: &mut [u16]) -> Option<UNICODE_STRING> {
    let bytes = u16::try_from(size_of_val(units)).ok()?;
    Some(UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_mut_ptr(),
    })
}

/// The little-endian u32 at `offset`, if `bytes` is long enough.
fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}
