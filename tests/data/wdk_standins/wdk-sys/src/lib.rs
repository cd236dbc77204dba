//! Stand-in for wdk-sys 0.5: the types, constants and functions the test driver uses, with the
//! types bindgen gives them from the WDK headers; no behaviour (see ../README.md).
#![no_std]
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, clippy::all)]
use core::ffi::c_void;
pub type NTSTATUS = i32;
pub type ULONG = u32;
pub type KIRQL = u8;
pub type BOOLEAN = u8;
pub type KPROCESSOR_MODE = i8;
pub type PVOID = *mut c_void;
pub type HANDLE = *mut c_void;
pub type PHANDLE = *mut HANDLE;
pub type ACCESS_MASK = u32;
pub const STATUS_SUCCESS: NTSTATUS = 0;
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000000Du32 as i32;
pub const STATUS_OBJECT_NAME_NOT_FOUND: NTSTATUS = 0xC0000034u32 as i32;
pub const fn NT_SUCCESS(status: NTSTATUS) -> bool { status >= 0 }
pub const APC_LEVEL: u32 = 1;
pub const DISPATCH_LEVEL: u32 = 2;
pub const HIGH_LEVEL: u32 = 15;
pub const KEY_READ: u32 = 0x20019;
pub const OBJ_CASE_INSENSITIVE: u32 = 0x40;
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
pub const REG_SZ: u32 = 1;
pub const REG_DWORD: u32 = 4;
pub const DPFLTR_ERROR_LEVEL: u32 = 0;
pub const THREAD_ALL_ACCESS: u32 = 0x1fffff;
pub const FALSE: u32 = 0;
#[repr(C)] #[derive(Debug, Copy, Clone)]
pub struct UNICODE_STRING { pub Length: u16, pub MaximumLength: u16, pub Buffer: *mut u16 }
pub type PUNICODE_STRING = *mut UNICODE_STRING;
pub type PCUNICODE_STRING = *const UNICODE_STRING;
#[repr(C)] #[derive(Debug, Copy, Clone)]
pub struct OBJECT_ATTRIBUTES { pub Length: u32, pub RootDirectory: HANDLE, pub ObjectName: PUNICODE_STRING, pub Attributes: u32, pub SecurityDescriptor: PVOID, pub SecurityQualityOfService: PVOID }
impl Default for OBJECT_ATTRIBUTES { fn default() -> Self { unsafe { core::mem::zeroed() } } }
pub type POBJECT_ATTRIBUTES = *mut OBJECT_ATTRIBUTES;
pub type PDRIVER_UNLOAD = Option<unsafe extern "C" fn(DriverObject: PDRIVER_OBJECT)>;
#[repr(C)]
pub struct DRIVER_OBJECT { pub DriverUnload: PDRIVER_UNLOAD }
pub type PDRIVER_OBJECT = *mut DRIVER_OBJECT;
#[repr(C)] #[derive(Copy, Clone)]
pub union LARGE_INTEGER { pub QuadPart: i64 }
pub type PLARGE_INTEGER = *mut LARGE_INTEGER;
#[repr(C)] #[derive(Default)]
pub struct KEVENT { _x: [u64; 3] }
pub type PCLIENT_ID = PVOID;
pub type PKSTART_ROUTINE = Option<unsafe extern "C" fn(StartContext: PVOID)>;
pub mod _KEY_VALUE_INFORMATION_CLASS { pub type Type = i32; pub const KeyValuePartialInformation: Type = 2; }
pub mod _DPFLTR_TYPE { pub type Type = i32; pub const DPFLTR_IHVDRIVER_ID: Type = 77; }
pub mod _EVENT_TYPE { pub type Type = i32; pub const NotificationEvent: Type = 0; }
pub mod _KWAIT_REASON { pub type Type = i32; pub const Executive: Type = 0; }
pub mod _MODE { pub type Type = i32; pub const KernelMode: Type = 0; }
pub mod ntddk {
    use super::*;
    extern "C" {
        pub fn ZwOpenKey(KeyHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: POBJECT_ATTRIBUTES) -> NTSTATUS;
        pub fn ZwQueryValueKey(KeyHandle: HANDLE, ValueName: PUNICODE_STRING, Class: _KEY_VALUE_INFORMATION_CLASS::Type, Info: PVOID, Length: ULONG, ResultLength: *mut ULONG) -> NTSTATUS;
        pub fn ZwClose(Handle: HANDLE) -> NTSTATUS;
        pub fn DbgPrintEx(ComponentId: ULONG, Level: ULONG, Format: *const i8, ...) -> ULONG;
        pub fn KeGetCurrentIrql() -> KIRQL;
        pub fn KeLowerIrql(NewIrql: KIRQL);
        pub fn KfRaiseIrql(NewIrql: KIRQL) -> KIRQL;
        pub fn KeInitializeEvent(Event: *mut KEVENT, Type: _EVENT_TYPE::Type, State: BOOLEAN);
        pub fn KeWaitForSingleObject(Object: PVOID, WaitReason: _KWAIT_REASON::Type, WaitMode: KPROCESSOR_MODE, Alertable: BOOLEAN, Timeout: PLARGE_INTEGER) -> NTSTATUS;
        pub fn KeDelayExecutionThread(WaitMode: KPROCESSOR_MODE, Alertable: BOOLEAN, Interval: PLARGE_INTEGER) -> NTSTATUS;
        pub fn PsCreateSystemThread(ThreadHandle: PHANDLE, DesiredAccess: ULONG, ObjectAttributes: POBJECT_ATTRIBUTES, ProcessHandle: HANDLE, ClientId: PCLIENT_ID, StartRoutine: PKSTART_ROUTINE, StartContext: PVOID) -> NTSTATUS;
        pub fn PsTerminateSystemThread(ExitStatus: NTSTATUS) -> NTSTATUS;
        pub fn ZwWaitForSingleObject(Handle: HANDLE, Alertable: BOOLEAN, Timeout: PLARGE_INTEGER) -> NTSTATUS;
    }
}
