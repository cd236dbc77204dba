//! Stand-in for wdk-alloc 0.4 (see ../README.md).
#![no_std]
pub struct WdkAllocator;
unsafe impl core::alloc::GlobalAlloc for WdkAllocator {
    unsafe fn alloc(&self, _: core::alloc::Layout) -> *mut u8 { core::ptr::null_mut() }
    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}
